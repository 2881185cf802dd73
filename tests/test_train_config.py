"""The pre-training config: parsing, overrides, validation messages, the LR schedule, memory estimates."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from vikhr.errors import VikhrError
from vikhr.train.config import doubtful_settings, load_config


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    for suffix in (".bin", ".idx"):
        (tmp_path / f"ru{suffix}").write_bytes(b"")  # validation checks presence only
    return str(tmp_path / "ru")


def _config(tmp_path: Path, dataset: str, **sections: dict) -> Path:
    cfg = {"data": {"train": [{"prefix": dataset, "weight": 1.0, "name": "ru"}], "seq_len": 64}}
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_defaults_are_the_papers(tmp_path: Path, dataset: str) -> None:
    cfg = load_config(_config(tmp_path, dataset))
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.eps, cfg.optim.warmup_steps) == (
        1e-3,
        [0.99, 0.95],
        1e-8,
        10,
    )
    assert cfg.kl.direction == "reverse" and cfg.kl.weight == 0.0


def test_yaml_merge_keys_may_be_overridden_but_keys_not_repeated(tmp_path: Path, dataset: str) -> None:
    """`<<: *anchor` brings an anchor's keys in, and keys after it override them (the duplicate-key
    check refused every merge key); a key written twice by hand is still refused."""
    path = tmp_path / "merge.yaml"
    path.write_text(
        "data:\n  seq_len: 64\n  train:\n"
        f"    - &ru {{prefix: {dataset}, weight: 1.0, name: ru}}\n"
        "    - {<<: *ru, name: ru2, weight: 0.5}\n",
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert [(e.prefix, e.weight, e.name) for e in cfg.data.train] == [
        (dataset, 1.0, "ru"),
        (dataset, 0.5, "ru2"),
    ]
    path.write_text(path.read_text(encoding="utf-8").replace("name: ru2,", "name: ru2, name: ru3,"))
    with pytest.raises(VikhrError, match=r"duplicate key 'name' \(first at line 5\)"):
        load_config(path)


def test_a_key_yaml_reads_as_a_boolean_or_null_is_named(tmp_path: Path) -> None:
    """`yes:` is `True:` to YAML 1.1 (was "Keys should be strings, got True" from the schema)."""
    path = tmp_path / "odd.yaml"
    for key, read in (("yes", "true"), ("Off", "false"), ("~", "null")):
        path.write_text(f"train:\n  steps: 2\n  {key}: 2\n", encoding="utf-8")
        with pytest.raises(VikhrError, match=rf"the key '{re.escape(key)}' is read as {read}, not as a name"):
            load_config(path)
    path.write_text("train:\n  'yes': 2\n", encoding="utf-8")
    with pytest.raises(VikhrError, match=r"unknown config key 'train.yes'"):
        load_config(path)


def test_a_warmup_as_long_as_the_run_is_a_warning(tmp_path: Path, dataset: str) -> None:
    cfg = load_config(_config(tmp_path, dataset, train={"steps": 10}))
    assert doubtful_settings(cfg) == [
        "optim.warmup_steps = 10 is not below train.steps = 10: the learning rate never reaches "
        "optim.lr = 0.001"
    ]
    assert doubtful_settings(load_config(_config(tmp_path, dataset, train={"steps": 11}))) == []


def test_overrides_are_typed(tmp_path: Path, dataset: str) -> None:
    cfg = load_config(
        _config(tmp_path, dataset),
        [
            "optim.lr=3e-4",
            "optim.betas=[0.9, 0.95]",
            "train.steps=12",
            "logging.tensorboard=false",
            "model.overrides.num_layers=3",
            "checkpoint.dir=runs/x",
            "--kl.weight=0.25",
        ],
    )
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == [0.9, 0.95] and cfg.train.steps == 12
    assert cfg.logging.tensorboard is False and cfg.kl.weight == 0.25
    assert cfg.model.shape().num_layers == 3 and cfg.checkpoint.dir == "runs/x"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
        ("optimizer.lr=1", "unknown config section 'optimizer'"),
        ("train.steps=many", "config key train.steps: expected int, got 'many'"),
        ("optim.lr=-1", "config key optim.lr must be positive"),
        ("model.preset=mistral-8b", "config key model.preset: unknown preset 'mistral-8b'"),
        (
            "model.overrides.num_layer=2",
            "unknown config key 'model.overrides.num_layer' (did you mean 'num_layers'?)",
        ),
        ("parallel.tensor=8", "parallel.tensor = 8 does not divide the model's num_attention_heads = 4"),
        ("model.overrides.num_attention_heads=3", "config key model (tiny): hidden_size 64 is not divisible"),
        # an odd head size passed the checks and failed at the first step (RoPE's pairs)
        ("model.overrides.kv_channels=3", "the attention head size 3 (kv_channels, or hidden_size"),
        (
            "data.seq_len=100000",
            "config key data.seq_len = 100000 exceeds the model's max_seq_len 256 (preset tiny): lower "
            "data.seq_len to 256 or less, or set model.overrides.max_seq_len",
        ),
        ("data.split=1,2", "config key data.split"),
        ("data.split=0,1,0", "gives training nothing: the first weight (train) must be above 0"),
        ("optim.decay=exp", "config key optim.decay"),
        ("kl.temperature=0", "config key kl.temperature must be positive"),
        ("checkpoint.resume=/nonexistent", "config key checkpoint.resume"),
        ("optim.betas=[0.9]", "config key optim.betas must have at least 2 items, got [0.9]"),
        ("optim.betas=[0.9, 1.5]", "config key optim.betas[1] must be < 1, got 1.5"),
        ("kl.direction=sideways", "config key kl.direction must be reverse or forward, got 'sideways'"),
        ("model.attention=flash", "config key model.attention must be auto, te, sdpa or local"),
        ("parallel.device=tpu", "config key parallel.device must be auto, cuda or cpu"),
        ("model.overrides.num_layers=two", "config key model.overrides.num_layers: expected int, got 'two'"),
        ("logging.tensorbord=false", "unknown config key 'logging.tensorbord' (did you mean 'tensorboard'?)"),
        ("train.steps.x=1", "config key train.steps: expected int"),
        ("train.seed=-1", "config key train.seed must be >= 0, got -1"),  # numpy's seeding refuses it
        ("train.seed=4294967296", "config key train.seed must be < 4294967296"),
        ("checkpoint.save_on_signals=[SIGKILL]", "config key checkpoint.save_on_signals[0] must be SIGTERM,"),
        ("checkpoint.stop_after_minutes=0", "checkpoint.stop_after_minutes must be positive, got 0"),
        (
            "checkpoint.save_on_signals=SIGTERM",
            "config key checkpoint.save_on_signals: expected a list, got 'SIGTERM'",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, dataset: str, override: str, message: str) -> None:
    with pytest.raises(VikhrError) as e:
        load_config(_config(tmp_path, dataset), [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "key", ["optim.lr", "optim.clip_grad", "optim.weight_decay", "optim.eps", "kl.temperature", "kl.weight"]
)
@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf"])
def test_nan_and_infinity_are_refused(tmp_path: Path, dataset: str, key: str, value: str) -> None:
    with pytest.raises(VikhrError) as e:
        load_config(_config(tmp_path, dataset), [f"{key}={value}"])
    assert str(e.value).startswith(f"config key {key} must be ") and "\n" not in str(e.value)
    assert "finite" in str(e.value) or "positive" in str(e.value) or ">=" in str(e.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("checkpoint.keep_last=true", "checkpoint.keep_last"),
        ("optim.lr=yes", "optim.lr"),
        ("train.steps=false", "train.steps"),
        ("kl.weight=true", "kl.weight"),
        ("optim.betas=[false,0.95]", "optim.betas"),
        ("debug.nonfinite_at_steps=[true]", "debug.nonfinite_at_steps"),
        ("model.overrides={num_layers: true}", "model.overrides.num_layers"),
    ],
)
def test_a_yes_no_value_is_not_a_number(tmp_path: Path, dataset: str, override: str, key: str) -> None:
    """YAML's true/yes/false are not read as 1 or 0 where a number belongs (pydantic's lax mode
    would); a yes/no key still takes them."""
    with pytest.raises(VikhrError) as e:
        load_config(_config(tmp_path, dataset), [override])
    assert str(e.value).startswith(f"config key {key}: expected a number, not a yes/no value, got ")
    assert load_config(_config(tmp_path, dataset), ["logging.tensorboard=false"]).logging.tensorboard is False


def test_dataset_weight_must_be_finite(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(VikhrError, match=r"config key data.train\[0\].weight must be a finite number"):
        load_config(_config(tmp_path, dataset), [f"data.train=[{{prefix: {dataset}, weight: .inf}}]"])
    entry = f"{{prefix: {dataset}, weight: 1e308, name: NAME}}"
    huge = f"data.train=[{entry.replace('NAME', 'a')}, {entry.replace('NAME', 'b')}]"
    with pytest.raises(VikhrError, match="the weights sum to infinity"):
        load_config(_config(tmp_path, dataset), [huge])


def test_unknown_dataset_key_and_missing_files(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(
        VikhrError, match=r"unknown config key 'data.train\[0\].wieght' \(did you mean 'weight'\?\)"
    ):
        load_config(_config(tmp_path, dataset), [f'data.train=[{{prefix: "{dataset}", wieght: 1}}]'])
    with pytest.raises(VikhrError, match=r"data.train\[0\].prefix: dataset file not found: .*/nope.bin"):
        load_config(_config(tmp_path, dataset), [f"data.train=[{{prefix: {tmp_path}/nope}}]"])
    # The prefix given with its suffix, or without the _text_document that preprocess appends.
    with pytest.raises(VikhrError, match=r"\.bin\.bin \(give the dataset prefix without \.bin/\.idx\)"):
        load_config(_config(tmp_path, dataset), [f"data.train=[{{prefix: {dataset}.bin}}]"])
    for suffix in (".bin", ".idx"):
        (tmp_path / f"en_text_document{suffix}").write_bytes(b"")
    with pytest.raises(VikhrError, match=f"writes {tmp_path}/en_text_document: give that prefix"):
        load_config(_config(tmp_path, dataset), [f"data.train=[{{prefix: {tmp_path}/en}}]"])
    # --dry-run sizes a job from its shapes: the files need not exist there.
    load_config(_config(tmp_path, dataset), [f"data.train=[{{prefix: {tmp_path}/nope}}]"], check_files=False)


def test_an_item_of_a_list_given_by_its_index_is_answered_with_the_whole_list(
    tmp_path: Path, dataset: str
) -> None:
    """`data.train.0.prefix=...` (a dataset of the config's blend, as `--adam-beta1` names optim.betas.0)
    said only "data.train has no sub-keys". The error now gives the list's override with its present
    value, which loads once the item is changed."""
    config = _config(tmp_path, dataset, optim={"betas": [0.9, 0.95]})
    with pytest.raises(VikhrError) as caught:
        load_config(config, [f"data.train.0.prefix={tmp_path}/other"])
    message = str(caught.value)
    assert message.startswith("unknown config key 'data.train.0.prefix': data.train is a list"), message
    suggested = re.search(r"e\.g\. (data\.train)='(.*)' with the item changed$", message)
    assert suggested is not None, message
    assert suggested.group(2) == f"[{{name: ru, prefix: {dataset}, weight: 1.0}}]"  # the file's key order
    cfg = load_config(config, [f"{suggested.group(1)}={suggested.group(2).replace('name: ru', 'name: x')}"])
    assert [(e.prefix, e.name) for e in cfg.data.train] == [(dataset, "x")]
    with pytest.raises(VikhrError, match=r"optim\.betas is a list.* e\.g\. optim\.betas='\[0\.9, 0\.95\]'"):
        load_config(config, ["optim.betas.1=0.99"])
    with pytest.raises(
        VikhrError, match=r"^unknown config key 'train\.steps\.x': train\.steps has no sub-keys$"
    ):
        load_config(_config(tmp_path, dataset, train={"steps": 3}), ["train.steps.x=1"])


def test_a_missing_config_or_one_given_as_an_override_is_named(tmp_path: Path, dataset: str) -> None:
    """`vikhr pretrain` without --config, or with the YAML given where the overrides go, says so
    (it said "data.train is empty", or only that an override must look like section.key=value)."""
    with pytest.raises(VikhrError, match=r"no config given: pass --config FILE\.yaml"):
        load_config(None, ["train.steps=4"])
    with pytest.raises(VikhrError, match=r"a config file is given as --config .*c\.yaml\)$"):
        load_config(None, [str(_config(tmp_path, dataset))])
    with pytest.raises(VikhrError, match=r"must look like section\.key=value$"):
        load_config(None, ["steps"])
    # Overrides alone that name the data are a config.
    load_config(None, [f"data.train=[{{prefix: {dataset}}}]", "data.seq_len=64"])


def test_lr_schedule_warms_up_then_decays_to_min(tmp_path: Path, dataset: str) -> None:
    from vikhr.train.trainer import lr_at

    cfg = load_config(_config(tmp_path, dataset), ["train.steps=110", "optim.min_lr=1e-4"])
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4)  # cosine midpoint
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])) and lrs[-1] > 1e-4
    linear = load_config(_config(tmp_path, dataset), ["train.steps=110", "optim.decay=linear"])
    assert lr_at(60, linear) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert not math.isclose(lr_at(35, linear), lr_at(35, cfg))


@pytest.mark.parametrize(
    ("shape", "kept"),
    [
        ("linear", lambda p: 1 - p),
        ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
        ("minus_sqrt", lambda p: 1 - math.sqrt(p)),
        ("exponential", lambda p: 2 * 0.5**p - 1),
    ],
)
def test_wsd_schedule_holds_then_decays_over_its_last_steps(
    tmp_path: Path, dataset: str, shape: str, kept
) -> None:
    """optim.decay=wsd (Megatron-LM's WSD): warm-up, lr held, then (lr - min_lr) scaled by the shape
    over the last decay_steps steps; extending train.steps before the decay leaves the steps run
    so far unchanged."""
    from vikhr.train.trainer import lr_at

    overrides = ["train.steps=110", "optim.min_lr=1e-4", "optim.decay=wsd", "optim.decay_steps=40"]
    cfg = load_config(_config(tmp_path, dataset), [*overrides, f"optim.wsd_shape={shape}"])
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lrs[10:71] == pytest.approx([1e-3] * 61)  # held until the last 40 steps
    for step in (70, 80, 90, 109):
        assert lrs[step] == pytest.approx(1e-4 + 9e-4 * kept((step - 70) / 40)), step
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])) and lrs[-1] > 1e-4
    longer = load_config(_config(tmp_path, dataset), ["train.steps=200", *overrides[1:]])
    assert [lr_at(s, longer) for s in range(70)] == lrs[:70]
    default = load_config(_config(tmp_path, dataset), ["train.steps=110", "optim.decay=wsd"])
    assert lr_at(90, default) == pytest.approx(1e-3) and lr_at(91, default) < 1e-3  # 20% of 100 steps


def test_a_resume_that_moves_the_learning_rate_says_so(tmp_path: Path, dataset: str) -> None:
    """A wsd run extended after its decay began climbed back to optim.lr at the next step, with only
    "settings changed: train.steps" said. Now a schedule that gives the next step another rate than
    the saved one is named, the wsd case with the fix; an extension before the decay is silent."""
    from vikhr.train.trainer import lr_jump

    wsd = ["optim.min_lr=1e-4", "optim.warmup_steps=1", "optim.decay=wsd", "optim.decay_steps=40"]
    saved = load_config(_config(tmp_path, dataset), ["train.steps=100", *wsd]).to_dict()
    longer = load_config(_config(tmp_path, dataset), ["train.steps=150", *wsd])
    assert lr_jump(saved, longer, 60) is None  # the decay begins at step 61
    jump = lr_jump(saved, longer, 80)
    assert jump is not None and jump.startswith("step 81 trains at lr 0.001, where the schedule it was saved")
    assert "its wsd decay had begun: extend a wsd run from a checkpoint saved before its decay" in jump
    cosine = load_config(_config(tmp_path, dataset), ["train.steps=100", "optim.warmup_steps=1"])
    extended = load_config(_config(tmp_path, dataset), ["train.steps=150", "optim.warmup_steps=1"])
    jump = lr_jump(cosine.to_dict(), extended, 50)
    assert jump is not None and "wsd" not in jump
    assert lr_jump(cosine.to_dict(), cosine, 50) is None and lr_jump({}, cosine, 50) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.decay_steps=20"], "optim.decay_steps is the length of the wsd decay; optim.decay is cosine"),
        (["optim.decay=wsd", "train.steps=30", "optim.decay_steps=25"], "optim.decay_steps = 25 is longer"),
        (["optim.decay=wsd", "optim.wsd_shape=sqrt"], "optim.wsd_shape"),
    ],
)
def test_wsd_settings_are_checked(tmp_path: Path, dataset: str, overrides: list[str], message: str) -> None:
    with pytest.raises(VikhrError, match=re.escape(message)):
        load_config(_config(tmp_path, dataset), overrides)


def test_megatron_wsd_flags_map_to_the_schedule() -> None:
    from vikhr.train.cli import build_arg_parser, config_overrides

    args = build_arg_parser().parse_args(
        ["--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "200", "--lr-wsd-decay-style", "cosine"]
    )
    assert sorted(config_overrides(args)) == [
        "optim.decay=wsd",
        "optim.decay_steps=200",
        "optim.wsd_shape=cosine",
    ]


def test_memory_estimate_of_mistral_7b_follows_tp() -> None:
    from vikhr.model import preset
    from vikhr.train.memory import estimate

    cfg = preset("mistral-7b-v0.2")
    e1, e8 = estimate(cfg, 1, 8, 1, 1024), estimate(cfg, 8, 8, 1, 1024)
    # 18 bytes per parameter for weights, fp32 grads, fp32 master + Adam moments.
    assert e1.parameters + e1.gradients + e1.optimizer == pytest.approx(18 * 7_241_732_096, rel=1e-9)
    assert e8.params_per_gpu < e1.params_per_gpu / 7.9 and e8.activations < e1.activations
    zero1 = estimate(cfg, 1, 8, 1, 1024, distributed_optimizer=True)
    assert zero1.optimizer == pytest.approx(e1.optimizer / 8) and zero1.gradients == e1.gradients
    long_seq = estimate(cfg, 2, 8, 1, 8192), estimate(cfg, 2, 8, 1, 8192, recompute=True)
    assert long_seq[1].activations < long_seq[0].activations / 3
    sp = estimate(cfg, 2, 8, 1, 8192, sequence_parallel=True)
    assert long_seq[0].activations * 0.6 < sp.activations < long_seq[0].activations * 0.9


def test_megatron_flags_are_overrides(tmp_path: Path, dataset: str) -> None:
    from vikhr.train.cli import build_arg_parser, config_overrides

    megatron = ["--tensor-model-parallel-size", "2", "--lr", "2e-4", "--adam-beta1", "0.9"]
    megatron += ["--adam-beta2", "0.98", "--seq-length", "128"]
    config = str(_config(tmp_path, dataset))
    args = build_arg_parser().parse_args(["--config", config, "train.steps=5", *megatron])
    cfg = load_config(args.config, config_overrides(args))
    assert (cfg.train.steps, cfg.parallel.tensor, cfg.optim.lr) == (5, 2, 2e-4)
    assert cfg.optim.betas == [0.9, 0.98] and cfg.data.seq_len == 128
    assert not cfg.optim.distributed and cfg.train.recompute == "none"
    switches = ["--use-distributed-optimizer", "--recompute-granularity", "full"]
    args = build_arg_parser().parse_args(["--config", config, *switches])
    cfg = load_config(args.config, config_overrides(args))
    assert cfg.optim.distributed and cfg.train.recompute == "full"
    args = build_arg_parser().parse_args(["--config", config, "--recompute-granularity", "selective"])
    with pytest.raises(VikhrError, match=r"train\.recompute must be none or full"):
        load_config(args.config, config_overrides(args))


def test_checkpoint_names_do_not_depend_on_the_layer_spec(tmp_path: Path) -> None:
    """Transformer Engine's fused-norm parameter names are saved (and loaded) under the local names."""
    import torch
    from safetensors.torch import load_file, save_file

    from vikhr.train.checkpoint import load_model_tensors, model_tensors

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear_qkv = torch.nn.Linear(4, 4, bias=False)
            self.linear_qkv.layer_norm_weight = torch.nn.Parameter(torch.randn(4))

    def model() -> torch.nn.Module:
        m = torch.nn.Module()
        m.block = torch.nn.Module()
        m.block.self_attention = Layer()
        return m

    te = model()
    tensors = model_tensors(te)
    assert sorted(tensors) == ["block.input_layernorm.weight", "block.self_attention.linear_qkv.weight"]
    save_file(tensors, str(tmp_path / "m.safetensors"))
    fresh = model()
    load_model_tensors(fresh, load_file(str(tmp_path / "m.safetensors")), tmp_path / "m.safetensors")
    assert torch.equal(
        fresh.state_dict()["block.self_attention.linear_qkv.layer_norm_weight"],
        tensors["block.input_layernorm.weight"],
    )


@pytest.mark.parametrize(
    ("config", "preset", "vocab"),
    [
        ("mistral-7b-v0.1.yaml", "mistral-7b-v0.1", 40000),
        ("mistral-7b-v0.2.yaml", "mistral-7b-v0.2", 40000),
        ("llama-3-8b.yaml", "llama-3-8b", 128256 + 16384),
    ],
)
def test_shipped_gpu_configs_fit_8_gpus_at_their_tp(config: str, preset: str, vocab: int) -> None:
    repo = Path(__file__).resolve().parent.parent
    cfg = load_config(repo / "configs" / config, check_files=False)
    shape = cfg.model.shape()
    assert (cfg.model.preset, shape.vocab_size, cfg.parallel.device) == (preset, vocab, "cuda")
    shape.validate(cfg.parallel.tensor)
    assert _bytes_per_gpu_on_8(cfg) < 80e9 * 0.9  # the config's own TP leaves headroom on an 80 GB GPU


def _bytes_per_gpu_on_8(cfg) -> float:
    """The memory estimate of one GPU when `cfg` runs on 8 GPUs at its own TP."""
    from vikhr.train.memory import estimate

    e = estimate(
        cfg.model.shape(),
        cfg.parallel.tensor,
        8,
        cfg.train.micro_batch,
        cfg.data.seq_len,
        cfg.kl.weight,
        cfg.model.vocab_multiple,
        distributed_optimizer=cfg.optim.distributed,
        sequence_parallel=cfg.parallel.sequence,
    )
    return e.parameters + e.gradients + e.optimizer + e.activations


def test_sft_7b_config_has_the_papers_table_5() -> None:
    repo = Path(__file__).resolve().parent.parent
    cfg = load_config(repo / "configs" / "sft-mistral-7b.yaml", check_files=False)
    assert (cfg.data.kind, cfg.data.seq_len, cfg.data.packing) == ("sft", 1024, "pad")
    assert (cfg.optim.lr, cfg.optim.eps, cfg.optim.betas, cfg.optim.warmup_steps) == (
        1e-5,
        1e-8,
        [0.99, 0.95],
        10,
    )
    dp = 8 // cfg.parallel.tensor  # the 8 GPUs of its torchrun line
    assert cfg.train.micro_batch == 3 and cfg.train.global_batch == 3 * 64
    assert cfg.train.global_batch % (cfg.train.micro_batch * dp) == 0
    train_chats = 680_000 * 0.99  # Table 4's mix, the config's 99 % train split; one chat per window
    assert cfg.train.steps == math.ceil(3 * train_chats / cfg.train.global_batch)
    assert _bytes_per_gpu_on_8(cfg) < 80e9 * 0.9


def test_changed_settings_names_each_difference_by_dotted_key() -> None:
    """What a resume reports as changed: nested sections and list elements by their dotted key."""
    from vikhr.train.config import changed_settings

    saved = {
        "train": {"steps": 6, "global_batch": 8, "seed": 1},
        "data": {"train": [{"prefix": "ru", "weight": 0.8}, {"prefix": "en", "weight": 0.2}]},
        "optim": {"betas": [0.9, 0.95]},
    }
    now = {
        "train": {"steps": 8, "global_batch": 8, "seed": 1},
        "data": {"train": [{"prefix": "ru", "weight": 0.7}, {"prefix": "en", "weight": 0.2}]},
        "optim": {"betas": [0.9, 0.99]},
    }
    assert changed_settings(saved, now) == [
        "data.train[0].weight 0.8 -> 0.7",
        "optim.betas[1] 0.95 -> 0.99",
        "train.steps 6 -> 8",
    ]
    assert changed_settings(saved, saved) == []
    grown = {**now, "data": {"train": [*now["data"]["train"], {"prefix": "code", "weight": 0.1}]}}
    assert "data.train [" in changed_settings(now, grown)[0]  # another number of datasets: the whole list


def test_a_second_run_on_a_checkpoint_dir_in_use_is_refused(tmp_path: Path, dataset: str) -> None:
    """Two runs on one checkpoint.dir (a double submission, a requeue while the first runs) would
    write the same step folders and remove each other's: the second stops before any work."""
    import fcntl
    import os

    from vikhr.train.run_lock import LOCK_FILE, run_lock
    from vikhr.train.trainer import run

    run_dir = tmp_path / "run"
    cfg = load_config(_config(tmp_path, dataset, checkpoint={"dir": str(run_dir)}))
    with run_lock(run_dir):
        holder = rf"another run \(pid {os.getpid()} on {re.escape(os.uname().nodename)}\); wait"
        with pytest.raises(VikhrError, match=rf"checkpoint.dir .*run is in use by {holder}"):
            run(cfg)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # nothing else was written
    with open(run_dir / LOCK_FILE) as f:  # released at the end
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # A run refused before it wrote anything leaves no checkpoint.dir behind.
    fresh = tmp_path / "fresh"
    with pytest.raises(VikhrError, match="refused"), run_lock(fresh):
        raise VikhrError("refused")
    assert not fresh.exists()


def test_a_failed_run_leaves_checkpoint_dir_as_it_found_it(tmp_path: Path) -> None:
    """A run refused after taking the run lock (a checkpoint of another model, a damaged one) left
    run.lock and empty folders in a checkpoint.dir that held neither. What it wrote a file in stays,
    and so does the lock file an earlier run left."""
    from vikhr.train.run_lock import LOCK_FILE, run_lock

    def refused(run_dir: Path, *folders: str, file: str | None = None) -> None:
        """A run in `run_dir` that makes `folders` (and writes `file`), then is refused."""
        with pytest.raises(VikhrError, match="refused"), run_lock(run_dir):
            for name in folders:
                (run_dir / name).mkdir()
            if file is not None:
                (run_dir / file).write_text("{}")
            raise VikhrError("refused")

    fresh = tmp_path / "new" / "runs" / "a"
    refused(fresh, "data-cache")
    assert not (tmp_path / "new").exists()  # with the parents made for it
    refused(fresh, "data-cache", "tensorboard", file="data-cache/data-check.json")
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == [
        "new",
        "new/runs",
        "new/runs/a",
        "new/runs/a/data-cache",
        "new/runs/a/data-cache/data-check.json",
    ]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    refused(existing, "data-cache")
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
    (existing / LOCK_FILE).write_text("")
    refused(existing, "data-cache")
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt", LOCK_FILE]


def test_a_failed_run_keeps_what_the_run_before_it_added_while_it_waited_for_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What checkpoint.dir held was listed before the lock was taken: an empty folder the run holding
    the lock made before it ended counted as the refused run's own, and was removed."""
    import contextlib
    from collections.abc import Iterator

    from vikhr.train import run_lock as run_lock_module

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    taken = run_lock_module.exclusive

    @contextlib.contextmanager
    def after_the_holder_ended(lock_path: Path, busy: str) -> Iterator[bool]:
        (run_dir / "tensorboard").mkdir()  # the earlier run's, made just before it let the lock go
        with taken(lock_path, busy) as held:
            yield held

    monkeypatch.setattr(run_lock_module, "exclusive", after_the_holder_ended)
    with pytest.raises(VikhrError, match="refused"), run_lock_module.run_lock(run_dir):
        (run_dir / "data-cache").mkdir()
        raise VikhrError("refused")
    assert sorted(p.name for p in run_dir.iterdir()) == ["tensorboard"]


def test_a_stop_in_the_setup_of_a_new_checkpoint_dir_writes_its_record(
    tmp_path: Path, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop signal before the data cache existed: the new checkpoint.dir was removed with the run
    lock, and writing stopped.json into it then failed with a traceback instead of the stop line."""
    import os
    import signal

    from vikhr.errors import RunStopped
    from vikhr.train import trainer

    run_dir = tmp_path / "run"
    cfg = load_config(
        _config(tmp_path, dataset, checkpoint={"dir": str(run_dir), "save_on_signals": ["SIGUSR1"]})
    )
    monkeypatch.setattr(trainer, "check_data", lambda cfg: os.kill(os.getpid(), signal.SIGUSR1))
    with pytest.raises(RunStopped, match="stopped on SIGUSR1 before step 1 of"):
        trainer.run(cfg)
    assert json.loads((run_dir / "stopped.json").read_text(encoding="utf-8"))["reason"] == "on SIGUSR1"


def test_save_on_signals_defaults_to_slurms_notices_and_may_be_emptied(tmp_path: Path, dataset: str) -> None:
    config = _config(tmp_path, dataset)
    assert load_config(config).checkpoint.save_on_signals == ["SIGTERM", "SIGUSR1"]
    assert load_config(config, ["checkpoint.save_on_signals=[]"]).checkpoint.save_on_signals == []
    with pytest.raises(VikhrError, match=r"debug\.signal_at_step sends the first of checkpoint\.save_on"):
        load_config(config, ["checkpoint.save_on_signals=[]", "debug.signal_at_step=2"])


def test_a_run_too_large_for_this_machine_s_memory_is_refused_before_its_setup(
    tmp_path: Path, dataset: str
) -> None:
    """data.seq_len = 10,000,000 (within model.overrides.max_seq_len) passed every check, built the
    model and data, and ended in a CPU out-of-memory traceback at the first step."""
    from vikhr.train.trainer import run

    run_dir = tmp_path / "run"
    overrides = ["model.overrides.max_seq_len=10000000", "data.seq_len=10000000", "parallel.device=cpu"]
    cfg = load_config(_config(tmp_path, dataset), [*overrides, f"checkpoint.dir={run_dir}"])
    with pytest.raises(VikhrError) as e:
        run(cfg)
    message = str(e.value)
    assert message.startswith("config key data.seq_len = 10000000 does not fit in memory: train.micro_batch")
    assert re.search(
        r"GiB of RAM here \([\d.,]+ GiB, less [\d.]+ GiB this process holds before training: python, "
        r"torch, megatron-core\): lower data\.seq_len to \d+ or less \(or train\.micro_batch\)$",
        message,
    )
    assert not run_dir.exists()


def test_the_seq_len_a_memory_refusal_offers_fits_and_a_model_too_large_is_named(
    tmp_path: Path, dataset: str
) -> None:
    from vikhr.train.memory import GIB, USABLE_SHARE, check_fits, run_estimate

    cfg = load_config(
        _config(tmp_path, dataset), ["model.overrides.max_seq_len=100000", "data.seq_len=100000"]
    )
    capacity = 0.5 * GIB
    with pytest.raises(VikhrError) as e:
        check_fits(cfg, 1, capacity, "0.5 GiB of a test", on_cuda=True)
    offered = int(re.search(r"lower data\.seq_len to (\d+) or less", str(e.value))[1])
    assert run_estimate(cfg, 1, offered, on_cuda=True).total <= USABLE_SHARE * capacity
    assert run_estimate(cfg, 1, offered + 1, on_cuda=True).total > USABLE_SHARE * capacity
    check_fits(
        cfg.model_copy(update={"data": cfg.data.model_copy(update={"seq_len": offered})}),
        1,
        capacity,
        "",
        on_cuda=True,
    )
    big = load_config(_config(tmp_path, dataset), ["model.preset=mistral-7b-v0.2"])
    with pytest.raises(
        VikhrError, match=r"^config key model\.preset = mistral-7b-v0\.2: its weights, gradients"
    ):
        check_fits(big, 1, 64 * GIB, "64 GiB of a test", on_cuda=True)
    # ZeRO-1 over 8 processes fits 80 GiB a GPU: the world size counts
    sharded = load_config(
        _config(tmp_path, dataset), ["model.preset=mistral-7b-v0.2", "optim.distributed=true"]
    )
    check_fits(sharded, 8, 80 * GIB, "80 GiB of a test", on_cuda=True)


def test_a_cpu_run_s_memory_estimate_counts_its_fp32_weights_and_activations(
    tmp_path: Path, dataset: str
) -> None:
    """A CPU run trains in fp32, but its refusal used the bf16 estimate of a GPU: a 20,000-token
    window of a small model peaked at 1.64 GB against an estimate of 0.69 GiB, so a run that could not
    fit was let through and a data.seq_len offered that did not fit either."""
    from vikhr.train.memory import USABLE_SHARE, check_fits, parameter_counts, run_estimate

    cfg = load_config(_config(tmp_path, dataset), ["data.seq_len=64"])
    cpu, gpu = run_estimate(cfg, 1, on_cuda=False), run_estimate(cfg, 1, on_cuda=True)
    _, params = parameter_counts(cfg.model.shape(), 1, cfg.model.vocab_multiple)
    # fp32 weights, fp32 gradients and Adam's two fp32 moments
    assert cpu.parameters + cpu.gradients + cpu.optimizer == 16 * params
    assert cpu.parameters == 2 * gpu.parameters and cpu.activations > gpu.activations
    # a capacity the bf16 estimate fits, the fp32 one does not: refused on the CPU only
    capacity = (gpu.total + cpu.total) / 2
    check_fits(cfg, 1, capacity, "a test's memory", on_cuda=True)
    with pytest.raises(VikhrError, match=r"^config key data\.seq_len = 64 does not fit in memory") as e:
        check_fits(cfg, 1, capacity, "a test's memory", on_cuda=False)
    offered = int(re.search(r"lower data\.seq_len to (\d+) or less", str(e.value))[1])
    assert run_estimate(cfg, 1, offered, on_cuda=False).total <= USABLE_SHARE * capacity


def _ram(monkeypatch: pytest.MonkeyPatch, size: float) -> None:
    """This machine's RAM, as memory_here reads it, is `size` bytes (rounded up to a page)."""
    import os

    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": math.ceil(size / 4096)}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])


def test_a_cpu_run_s_memory_check_counts_what_its_processes_hold_before_training(
    tmp_path: Path, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU check compared the estimate with the whole RAM: python, torch and megatron-core (~0.7
    GiB a process, each torchrun rank its own) were left out, so a run just under the RAM was accepted
    and then killed by the kernel in its setup."""
    from vikhr.train import memory
    from vikhr.train.memory import GIB, check_fits, memory_here, run_estimate
    from vikhr.train.trainer import run

    run_dir = tmp_path / "run"
    long = ["model.overrides.max_seq_len=65536", "data.seq_len=65536", "parallel.device=cpu"]
    cfg = load_config(_config(tmp_path, dataset), [*long, f"checkpoint.dir={run_dir}"])
    need = run_estimate(cfg, 1, on_cuda=False).total
    assert need > 1 * GIB
    # Over the estimate by less than a trainer process holds before it trains: refused before setup.
    allowance = memory.TRAINER_PRIVATE + memory.TRAINER_SHARED
    assert allowance >= 0.7 * GIB
    _ram(monkeypatch, need + allowance - 64 * 2**20)
    with pytest.raises(VikhrError) as e:
        run(cfg)
    said = re.match(
        r"config key data\.seq_len = 65536 does not fit in memory: .* more than the [\d.]+ GiB of RAM here "
        r"\([\d.]+ GiB, less ([\d.]+) GiB this process holds before training: python, torch, "
        r"megatron-core\): lower data\.seq_len to \d+ or less",
        str(e.value),
    )
    assert said and float(said[1]) == round(allowance / GIB, 1), str(e.value)
    assert not run_dir.exists()
    _ram(monkeypatch, need + allowance + 2**20)
    check_fits(cfg, 1, *memory_here(on_cuda=False), on_cuda=False)
    # Each rank on the machine holds its private memory; their libraries are shared once.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    two = 2 * memory.TRAINER_PRIVATE + memory.TRAINER_SHARED
    assert memory.process_allowance(2) == two
    _ram(monkeypatch, 2 * need + two + 2**20)
    check_fits(cfg, 2, *memory_here(on_cuda=False), on_cuda=False)
    _ram(monkeypatch, 2 * need + two - 2**20)
    with pytest.raises(VikhrError, match=r"less [\d.]+ GiB its 2 processes hold before training: python, "):
        check_fits(cfg, 2, *memory_here(on_cuda=False), on_cuda=False)
    # Not this process's resident memory: the demo and ablate train stage after stage in one process,
    # which then holds freed heap the next stage reuses (a pytest worker, the tests before).
    held = bytearray(512 * 2**20)
    held[:: 2**12] = b"x" * len(held[:: 2**12])
    assert memory.process_allowance(1) == allowance
