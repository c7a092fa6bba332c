"""Red-team issue 15, item 6 (b, d) at the engine seam: vLLM is given the verified copy and nothing else.

vLLM's front end reads the config, generation config, tokenizer and chat template from ``model`` and
``tokenizer``, and its LoRA manager reads an adapter from its ``LoRARequest`` path when a request first
names it. All of them are paths inside the verified copy (``bastion.models.verified``), so a file swapped
in the original directories after verification is never read.
"""

from __future__ import annotations

from pathlib import Path

from bastion.config import load_settings
from bastion.digest import digest_dir
from bastion.engine.vllm.engine import _engine_args, lora_requests
from bastion.models.default import PreparedModel
from bastion.models.verified import stage


def test_vllm_reads_the_model_files_and_adapters_from_the_copy(model: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    listing = digest_dir(model)
    prepared = PreparedModel("plain", model, listing.digest, files=listing.files)
    copy = stage(tmp_path / "cache", prepared, {"support": adapter})
    try:
        settings = load_settings(
            overrides={"model": {"adapters": {"support": str(adapter)}}, "weights": {"allow_unsealed": True}}
        )
        args = _engine_args(settings, str(copy.model), "plain", "cpu")
        assert args.model == args.tokenizer == str(copy.model)
        assert args.hf_config_path is None  # config.json comes from `model`: the copy
        assert args.generation_config == "auto"  # likewise generation_config.json
        loras = lora_requests(copy)
        assert list(loras) == ["support"]
        assert loras["support"].lora_path == str(copy.adapters["support"])
        assert Path(loras["support"].lora_path).is_relative_to(copy.root)
        assert not Path(loras["support"].lora_path).is_relative_to(adapter)
    finally:
        copy.close()
