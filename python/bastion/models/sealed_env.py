"""Environment variables through which the server tells vLLM's processes how to load a sealed model.

Set before the engine starts and inherited by the EngineCore and worker processes: references only (a
policy path, a model name; the key provider's own variables are in ``bastion.keys``), never key material.
"""

ENV_TRUST_POLICY = "BASTION_TRUST_POLICY"
ENV_SERVED_MODEL = "BASTION_SERVED_MODEL"
