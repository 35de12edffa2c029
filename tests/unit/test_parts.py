"""Parts of an experiment by name (acdc_lib.components and acdc_lib.experiment.parts)."""
import pytest
import torch

from acdc_lib import components
from acdc_lib.experiment import parts as P
from acdc_lib.memory import LLMMemory, NoMemory, RuleMemory
from acdc_lib.types import ARM, Corrector, Evaluator, GroundTruth, TextToImage


def test_every_backend_name_is_registered():
    assert set(components.available("arm")) == {"toy", "emu3", "janus"}
    assert set(components.available("corrector")) == {"toy", "sd"}
    assert set(components.available("evaluator")) == {"toy", "real"}
    assert set(components.available("ground_truth")) == {"toy"}
    with pytest.raises(ValueError, match=r"arm 'show-o' is not available; available arms: \['emu3', 'janus', 'toy'\]"):
        components.build("arm", "show-o")
    with pytest.raises(ValueError, match="unknown component kind 'vae'"):
        components.available("vae")


def test_toy_parts_implement_the_protocols():
    parts = P.build_parts()
    assert isinstance(parts.arm, ARM) and isinstance(parts.corrector, Corrector)
    assert isinstance(parts.corrector, TextToImage) and isinstance(parts.evaluator, Evaluator)
    assert isinstance(parts.ground_truth, GroundTruth) and isinstance(parts.memory, RuleMemory)
    assert parts.rows == ("dm_only", "arm", "acdc_rules", "acdc_nomem", "arm_true_ctx")
    assert parts.names["dtype"] == "float32" and parts.reference is not None


def test_rows_follow_the_memory_and_the_ground_truth():
    assert P.experiment_rows("none", False) == ("dm_only", "arm", "acdc_nomem")
    assert P.experiment_rows("llm", True) == ("dm_only", "arm", "acdc_llm", "acdc_nomem", "arm_true_ctx")
    with pytest.raises(ValueError, match="MEMORY 'gpt' is not available; allowed: \\['rules', 'llm', 'none'\\]"):
        P.experiment_rows("gpt", True)


def test_memories_by_name(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(P.build_memory("none"), NoMemory)
    with pytest.raises(ValueError, match="needs OPENAI_API_KEY"):
        P.build_memory("llm")
    llm = P.build_memory("llm", llm_cache=tmp_path / "answers.sqlite")
    assert isinstance(llm, LLMMemory) and isinstance(llm.fallback, RuleMemory)
    assert P.build_memory("llm", vocabulary=None, llm_cache=tmp_path / "a.sqlite").fallback is None
    with pytest.raises(ValueError, match="needs a vocabulary"):
        P.build_memory("rules", vocabulary=None)


def test_dtypes_and_bad_names():
    assert P.parse_dtype("float16") is torch.float16 and P.parse_dtype(None) is torch.float32
    with pytest.raises(ValueError, match="DTYPE 'half' is not supported"):
        P.parse_dtype("half")
    with pytest.raises(ValueError, match="float32 only"):
        P.build_parts(dtype="float16")
    with pytest.raises(ValueError, match="model_id"):
        P.build_parts(dm="sd")


def test_command_line_options_parse_as_json_or_text():
    assert components.parse_options(["image_size=256", "top_k=8", "prompt_template={} now"]) == {
        "image_size": 256, "top_k": 8, "prompt_template": "{} now"}
    with pytest.raises(ValueError, match="--arm-option 'image_size' is not KEY=VALUE"):
        components.parse_options(["image_size"])
    with pytest.raises(ValueError, match="'2x=3'"):
        components.parse_options(["2x=3"])
