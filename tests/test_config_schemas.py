"""Typed configs of every group and every stage (moe2.config.schema).

For each group a wrong type and an unknown key fail when Hydra composes, with OmegaConf's message
naming the key; every stage of the stage table composes from its own schema; the schemas agree with
the code that reads them (one list of keys and defaults, not two).
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from moe2.config import conf_dir
from moe2.config import options as O
from moe2.config import schema as S
from moe2.config.stage_schemas import stage_schemas
from moe2.errors import ConfigError
from moe2.utils.stage import compose

CONF = Path(conf_dir())

#: (primary config, override, text of OmegaConf's message): one wrong type and one unknown key
#: per group or stage-level node
COMPOSE_FAILURES = [
    ("train", "gating.batch_size=big", "could not be converted to Integer"),
    ("train", "gating.batchsize=3", "Key 'batchsize' not in 'GatingCfg'"),
    ("train", "gating.net.hidden=wide", "could not be converted to Integer"),
    ("train", "gating.net.hiden=3", "Key 'hiden' not in 'GatingNetCfg'"),
    ("train", "gating.loss.tau=hot", "could not be converted to Float"),
    ("train", "gating.loss.temperature=1", "Key 'temperature' not in 'GatingLossCfg'"),
    ("train", "gating.optimizer=adam", "gating.optimizer"),
    ("train", "++logger=3", "logger"),
    ("train", "oof.seed=x", "could not be converted to Integer"),
    ("train", "oof.fold=3", "Key 'fold' not in 'OofCfg'"),
    ("train", "optimized_metric=[a]", "optimized_metric"),
    ("train", "seed=abc", "could not be converted to Integer"),
    ("import", "data.split_seed=x", "could not be converted to Integer"),
    ("import", "data.queris=q.jsonl", "Key 'queris' not in 'LlmrouterDataCfg'"),
    ("import", "data.keep_splits=maybe", "data.keep_splits"),
    ("harvest", "data.n_per_category=many", "could not be converted to Integer"),
    ("harvest", "data.n_per_categry=5", "Key 'n_per_categry' not in 'EmbeddedDataCfg'"),
    ("harvest", "experts.members=[{name: a, modle: b}]", "Key 'modle' not in 'ExpertMemberCfg'"),
    ("harvest", "experts.pool=x", "Key 'pool' not in 'ExpertsCfg'"),
    ("harvest", "experts.members=5", "experts.members"),
    ("harvest", "harvest.batch_size=x", "could not be converted to Integer"),
    ("harvest", "harvest.limt=5", "Key 'limt' not in 'HarvestCfg'"),
    ("profile", "profile.repeats=x", "could not be converted to Integer"),
    ("profile", "profile.repeat=3", "Key 'repeat' not in 'ProfileCfg'"),
    ("select", "costs.kv.batch=two", "could not be converted to Integer"),
    ("select", "costs.kv.batc=1", "Key 'batc' not in 'CostsKvCfg'"),
    ("select", "costs.network.enabled=perhaps", "costs.network.enabled"),
    ("select", "optimized_metric=[a]", "optimized_metric"),
    ("check_preserving", "preserving.m=x", "could not be converted to Integer"),
    ("check_preserving", "preserving.n=3", "Key 'n' not in 'PreservingCfg'"),
    ("sweep", "sweep.points=x", "could not be converted to Integer"),
    ("sweep", "sweep.point=3", "Key 'point' not in 'SweepCfg'"),
    ("sweep", "eval.outcome=x", "Key 'outcome' not in 'SweepEvalCfg'"),
    ("evaluate", "eval.batch_size=x", "could not be converted to Integer"),
    ("evaluate", "eval.gating=x", "Key 'gating' not in 'EvaluateCfg'"),
    ("export", "device=[cpu]", "device"),
    ("build_engines", "parity.atol=x", "could not be converted to Float"),
    ("build_engines", "parity.tol=1", "Key 'tol' not in 'ToleranceCfg'"),
    ("build_engines", "verbose=loud", "verbose"),
    ("verify", "bundle.pth=x", "Key 'pth' not in 'BundleRefCfg'"),
    ("ask", "max_new_tokens=many", "could not be converted to Integer"),
    ("ask", "k=two", "could not be converted to Integer"),
    ("serve", "server.port=http", "could not be converted to Integer"),
    ("serve", "server.prt=1", "Key 'prt' not in 'ServerCfg'"),
    ("serve", "threads=x", "could not be converted to Integer"),
    ("serve", "deployment.fil=x", "Key 'fil' not in 'DeploymentCfg'"),
    ("serve", "deployment.default=3", "deployment.default"),
    ("serve_expert", "measure.concurrency=x", "could not be converted to Integer"),
    ("serve_expert", "measure.concurency=2", "Key 'concurency' not in 'MeasureCfg'"),
    ("serve_expert", "server.ready_fil=x", "Key 'ready_fil' not in 'ServerCfg'"),
    ("pipeline", "pipeline.stage=[train]", "Key 'stage' not in 'PipelineCfg'"),
    ("pipeline", "pipeline.stages=train", "pipeline.stages"),
]


@pytest.mark.parametrize(
    ("primary", "override", "message"), COMPOSE_FAILURES, ids=[c[1] for c in COMPOSE_FAILURES]
)
def test_a_wrong_type_or_unknown_key_fails_at_compose(
    primary: str, override: str, message: str
) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose(primary, [override])
    text = f"{info.value} {info.value.__cause__}"
    assert message in text, text


def test_each_importer_has_its_own_keys() -> None:
    cfg = compose("import", ["data=routerbench", "data.path=a.csv"])
    assert OmegaConf.get_type(cfg.data) is S.RouterbenchDataCfg and "queries" not in cfg.data
    with pytest.raises(ConfigCompositionException, match="queries"):
        compose("import", ["data=routerbench", "data.queries=q.jsonl"])
    # a list of CSVs is one of routerbench's path forms
    assert list(compose("import", ["data=routerbench", "data.path=[a.csv,b.csv]"]).data.path) == [
        "a.csv",
        "b.csv",
    ]


@pytest.mark.parametrize(
    ("primary", "overrides", "message"),
    [
        ("train", ["gating.net.mode=full"], "gating.net.mode='full'; use one of frozen"),
        ("train", ["gating.net.mode=lora"], "gating.net.mode=lora needs gating.net.lora"),
        ("train", ["gating.fit_on=all"], "gating.fit_on='all'; use one of train"),
        ("train", ["gating.loss.tau=0"], "gating.loss.tau=0.0; the temperature must be > 0"),
        ("train", ["oof.folds=1"], "oof.folds=1; use auto, 0"),
        (
            "train",
            ["++gating.optimizer.lrr=0.1"],
            r"torch.optim.AdamW takes no argument\(s\) \['lrr'\]",
        ),
        (
            "train",
            ["logger=csv", "++logger.csv.save_dirr=x"],
            r"takes no argument\(s\) \['save_dirr'\]",
        ),
        ("train", ["++logger.csv._target_=moe2.utils.io.write_text_atomic"], "not allowed"),
        ("train", ["logger=csv", "logger.csv=3"], "logger.csv: expected a mapping with _target_"),
        ("train", ["+harvest.limit=3"], r"unknown top-level key\(s\) \['harvest'\]"),
        ("harvest", ["+harvest.limt=3"], r"harvest: unknown harvest key\(s\) \['limt'\]"),
        ("select", ["+budget.watts=3"], r"unknown budget key\(s\) \['watts'\]"),
        ("harvest", ["+experts.members.0.gpu=x"], r"experts.members\[0\]: unknown members key"),
        ("import", ["data.path=x", "data.split_fractions=[0.5,0.5,0.5]"], "summing to 1"),
        ("import", ["data.path=x", "data.on_duplicate=keep"], "data.on_duplicate='keep'"),
        ("harvest", ["harvest.mode=batched"], "harvest.mode='batched'; use one of packed"),
        ("select", ["costs.power=hot"], "costs.power='hot'; use one of idle"),
        ("sweep", ["sweep.mode=cube"], "sweep.mode='cube'"),
        ("check_preserving", ["preserving.max_size=1"], "preserving.max_size=1 is below"),
        ("evaluate", ["eval.outcomes_dir=x", "eval.device=tpu"], "eval.device='tpu'"),
        ("serve", ["server.port=70000"], r"server.port must be in \[0, 65535\]"),
        ("serve", ["routing.aggregation=sum"], "routing.aggregation must be one of"),
        # routing: typed by the server's own RoutingCfg (a mapping: `lambda` is a Python keyword)
        (
            "serve",
            ["routing.max_tokens=x"],
            "routing: Value 'x' of type 'str' could not be converted to Integer",
        ),
        ("serve", ["++routing.breaker.reset=1"], "routing: Key 'reset' not in 'BreakerCfg'"),
        ("serve", ["++routing.max_token=1"], "routing: Key 'max_token' not in 'RoutingCfg'"),
        (
            "serve",
            ["++deployment.default.timeout=3"],
            r"deployment.default: unknown key\(s\) \['timeout'\]",
        ),
        ("serve", ["++deployment.experts.a.urll=http://x/v1"], "deployment.experts.a: unknown key"),
        ("serve_expert", ["expert=a", "measure.concurrency=0"], "measure.concurrency >= 1"),
    ],
)
def test_rules_between_fields_and_factory_arguments_fail_before_the_stage(
    primary: str, overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        compose(primary, overrides)


def test_open_nodes_stay_open() -> None:
    """Factories passing ``**kwargs`` on (W&B's logger, peft's LoRA options) take any key."""
    cfg = compose(
        "train", ["++logger.wandb.tags=[a,b]", "gating=minilm_lora", "++gating.net.lora.bias=all"]
    )
    assert list(cfg.logger.wandb.tags) == ["a", "b"] and cfg.gating.net.lora.bias == "all"
    assert compose("train", ["logger=none"]).logger == {}
    # a stage-only key reaches `moe2 pipeline` with ++, and its stage's schema types it there
    assert compose("pipeline", ["++harvest.limit=50"]).harvest.limit == 50
    with pytest.raises(ConfigError, match=r"harvest: unknown harvest key\(s\) \['limt'\]"):
        compose("harvest", ["++harvest.limt=50"])


def _stage_configs() -> list[str]:
    from moe2.stages import STAGES

    return sorted({s.config_name for s in STAGES.values()})


@pytest.mark.parametrize("config_name", _stage_configs())
def test_every_stage_composes_from_its_schema(config_name: str) -> None:
    """Every stage of the stage table (moe2.stages.STAGES) composes and validates its shipped
    config, typed by its own schema (required ``???`` values given)."""
    required = {
        "ask": ["prompt=hi"],
        "evaluate": ["eval.outcomes_dir=x"],
        "import": ["data.path=x"],
        "serve_expert": ["expert=a"],
    }
    cfg = compose(config_name, required.get(config_name, []))
    assert OmegaConf.get_type(cfg) is stage_schemas()[config_name]
    OmegaConf.to_container(cfg, resolve=True)
    assert not OmegaConf.missing_keys(cfg)


def test_every_primary_config_has_a_stage_schema() -> None:
    primaries = {p.stem for p in CONF.glob("*.yaml")}
    assert primaries == set(stage_schemas()), primaries ^ set(stage_schemas())
    for name in primaries:
        first = yaml.safe_load((CONF / f"{name}.yaml").read_text())["defaults"][0]
        assert first == f"_{name}_schema", (name, first)


def test_every_data_option_names_its_importers_schema() -> None:
    for path in sorted((CONF / "data").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        fmt = data["format"]
        assert data["defaults"] == [f"_schema_{fmt}", "_self_"], path
        # the file holds what differs from its schema; the schema has the rest
        cfg = compose(
            "import" if fmt not in ("embedded", "prompts") else "harvest", [f"data={path.stem}"]
        )
        assert OmegaConf.get_type(cfg.data) is S.DATA_SCHEMAS[fmt]
        fields = {f.name for f in dataclasses.fields(S.DATA_SCHEMAS[fmt])}
        assert set(cfg.data) == fields


def test_schemas_agree_with_the_code_that_reads_them() -> None:
    from moe2.experts import registry
    from moe2.experts.harvest import HarvestOptions
    from moe2.gating.net import MODES, GatingNet
    from moe2.profiling.analytic import DEFAULT_COSTS
    from moe2.serving.config import Placement

    assert S.GATE_MODES == MODES
    sig = inspect.signature(GatingNet.__init__).parameters
    net = {f.name: f.default for f in dataclasses.fields(S.GatingNetCfg)}
    args = {k: p.default for k, p in sig.items() if k not in ("self", "experts", "categories")}
    assert {k: v for k, v in net.items() if k != "category"} == args
    assert {f.name for f in dataclasses.fields(S.ExpertMemberCfg)} == registry._MEMBER_KEYS
    assert HarvestOptions is O.HarvestCfg
    assert dataclasses.asdict(O.CostsCfg()) == DEFAULT_COSTS
    # a partial placement's keys are Placement's
    S.DeploymentCfg(default={f.name: None for f in dataclasses.fields(Placement)})


def test_the_shipped_pools_and_gates_are_typed() -> None:
    cfg = compose("pipeline", [])
    assert OmegaConf.get_type(cfg.experts.members[0]) is S.ExpertMemberCfg
    assert OmegaConf.get_type(cfg.gating.net) is S.GatingNetCfg
    assert OmegaConf.get_type(cfg.costs) is O.CostsCfg
    for pool in ("llmrouter9", "tiny", "qwen_random"):
        assert compose("harvest", [f"experts={pool}"]).experts.name == pool
    serve = compose("serve", ["deployment=remote"])
    assert serve.deployment.default.kind == "openai" and serve.server.port == 8000
    assert compose("serve_expert", ["expert=a"]).server.port == 8100


def test_the_pipeline_checks_every_stage_config_before_running_one() -> None:
    from moe2.pipeline import run_pipeline

    ran: list[str] = []
    cfg = compose("pipeline", ["pipeline.stages=[harvest]", "++harvest.batch_size=0"])
    with pytest.raises(ConfigError, match="harvest.batch_size and harvest.shard_size must be >= 1"):
        run_pipeline(cfg, lambda name, c: ran.append(name))
    assert ran == []
