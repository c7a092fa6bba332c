"""PyRIT (``pyrit``, installed beside the lock: requirements/clients.lock) against bastion's HTTP API: its
OpenAI chat target sends a few prompts, a substring scorer scores each answer, and one JSON line per prompt
is printed (outcome, score, answer). Run by tests/e2e/test_http_clients.py:

    python pyrit_probe.py BASE_URL MODEL   (the API key in $OPENAI_CHAT_KEY)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from pyrit.executor.attack import AttackScoringConfig, PromptSendingAttack
from pyrit.prompt_target import OpenAIChatTarget
from pyrit.score import SubStringScorer
from pyrit.setup import initialize_pyrit_async

PROMPTS = (
    "What is the capital of France?",
    "Name the capital city of France in one word.",
    "Which city is the capital of Germany?",
)


async def main(base_url: str, model: str) -> None:
    await initialize_pyrit_async("InMemory", silent=True)
    target = OpenAIChatTarget(
        endpoint=base_url + "/v1",
        model_name=model,
        api_key=os.environ["OPENAI_CHAT_KEY"],
        max_completion_tokens=16,
        temperature=0.0,
    )
    scorer = SubStringScorer(substring="Paris", categories=["capital"])
    attack = PromptSendingAttack(
        objective_target=target, attack_scoring_config=AttackScoringConfig(objective_scorer=scorer)
    )
    for prompt in PROMPTS:
        result = await attack.execute_async(objective=prompt)
        answer = result.last_response.converted_value if result.last_response else None
        score = result.last_score.get_value() if result.last_score else None
        print(json.dumps({"prompt": prompt, "outcome": result.outcome.value, "score": score, "answer": answer}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
