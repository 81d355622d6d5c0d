"""Device and expert registries: one YAML per entry under ``conf/`` (data, not code).

- ``conf/hardware/<device>.yaml`` -> :class:`DeviceSpec` (:func:`load_device`, :func:`list_devices`)
- ``conf/experts/models/<model>.yaml`` (and directories of ``$MOE2_MODEL_CARDS``, searched first)
  -> :class:`ModelCard` (:func:`load_model_card`, :func:`list_model_cards`); a pool member may
  also give its ``model`` inline as a mapping of card fields (:func:`model_card_from_dict`)
- ``conf/experts/<pool>.yaml`` (the Hydra group ``experts``) -> a list of :class:`ExpertSpec`
  (:func:`load_pool`), one per member ``{name, model, device, precision, instance?, power_mode?}``.

Placement: ``device`` is a device *type*; the optional ``instance`` names one physical box of that
type (``orin_agx#1``, ``orin_agx#2``). Memory capacity is per instance: experts with the same
``device#instance`` share its memory; a member without ``instance`` gets a box of its own (its
placement is ``device#<expert name>``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from moe2.errors import ConfigError

#: bytes per weight for each storage precision (INT4: packed two per byte; group scales ignored)
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}

GIB = 1024**3


def _conf() -> Path:
    from moe2.config import conf_dir

    return Path(conf_dir())


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a {what} file must be a mapping of fields, got {type(data).__name__}"
        )
    return data


def _require(data: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if data.get(k) is None]
    if missing:
        raise ConfigError(f"{path}: missing field(s) {missing}")


@dataclass(frozen=True)
class DeviceSpec:
    """A hardware target (``conf/hardware/<name>.yaml``).

    Attributes:
        name: the config name (``orin_agx``, ``rtx4090``, ``cpu``, ``h200``).
        memory_gb: memory capacity in GiB; ``memory_reserved_gb`` of it is left to the OS/runtime.
        memory_bandwidth_gbs: peak DRAM bandwidth, GB/s (1e9 bytes/s).
        peak_tflops: dense peak throughput per compute precision, TFLOP/s (TOP/s for integers).
        power_w: ``{idle, typical, max}`` watts.
        power_modes: named power modes (Jetson nvpmodel) -> watts; ``power_mode`` the active one.
        efficiency: ``{compute, bandwidth}`` achievable fractions of the peaks.
        network: ``{rtt_ms, bandwidth_mbps}`` of the link clients reach the device over.
        tensorrt: ``{builder: tensorrt_rtx | tensorrt, precisions: [...]}``: the TensorRT module
            that builds its engines and the ONNX precisions they are built from.
    """

    name: str
    description: str
    cpu_arch: str
    sm_arch: str | None
    memory_gb: float
    memory_bandwidth_gbs: float
    peak_tflops: dict[str, float]
    power_w: dict[str, float]
    power_modes: dict[str, float] = field(default_factory=dict)
    power_mode: str | None = None
    efficiency: dict[str, float] = field(default_factory=lambda: {"compute": 0.5, "bandwidth": 0.7})
    network: dict[str, float] = field(
        default_factory=lambda: {"rtt_ms": 0.0, "bandwidth_mbps": 1000.0}
    )
    tensorrt: dict[str, Any] = field(default_factory=lambda: {"precisions": []})
    memory_reserved_gb: float = 0.0
    #: fields of the YAML this version does not interpret
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.power_mode is not None and self.power_mode not in self.power_modes:
            raise ConfigError(
                f"device {self.name}: power_mode {self.power_mode!r} is not one of "
                f"{sorted(self.power_modes) or 'its modes (it has none)'}"
            )
        if self.memory_gb <= 0 or self.memory_bandwidth_gbs <= 0:
            raise ConfigError(
                f"device {self.name}: memory_gb and memory_bandwidth_gbs must be positive"
            )
        for k in ("idle", "typical", "max"):
            if k not in self.power_w:
                raise ConfigError(
                    f"device {self.name}: power_w lacks '{k}' (give idle, typical, max watts)"
                )

    @property
    def capacity_bytes(self) -> float:
        """Memory available to experts: ``(memory_gb - memory_reserved_gb)`` GiB, in bytes."""
        return (self.memory_gb - self.memory_reserved_gb) * GIB

    @property
    def power(self) -> float:
        """Watts while busy: the active power mode's watts, else the typical power."""
        if self.power_mode is not None:
            return float(self.power_modes[self.power_mode])
        return float(self.power_w["typical"])

    def peak(self, precision: str) -> float:
        """Dense peak TFLOP/s for a compute precision (ConfigError naming the known ones)."""
        if precision not in self.peak_tflops:
            raise ConfigError(
                f"device {self.name} has no peak throughput for precision {precision!r}; "
                f"known: {sorted(self.peak_tflops)} (add it to conf/hardware/{self.name}.yaml)"
            )
        return float(self.peak_tflops[precision])

    def with_power_mode(self, mode: str | None) -> DeviceSpec:
        """A copy running in another power mode (``None`` keeps the current one)."""
        if mode is None:
            return self
        return dataclasses.replace(self, power_mode=str(mode))


_DEVICE_FIELDS = {f.name for f in dataclasses.fields(DeviceSpec)}


def list_devices() -> list[str]:
    """Names of the devices in ``conf/hardware/``."""
    return sorted(p.stem for p in (_conf() / "hardware").glob("*.yaml"))


def load_device(name: str) -> DeviceSpec:
    """Load ``conf/hardware/<name>.yaml``.

    Raises:
        ConfigError: unknown device (the message lists the known ones) or a malformed file.
    """
    path = _conf() / "hardware" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown device {name!r}; known devices: {', '.join(list_devices())} (conf/hardware/)"
        )
    data = _read_yaml(path, "device")
    _require(
        data,
        ("name", "cpu_arch", "memory_gb", "memory_bandwidth_gbs", "peak_tflops", "power_w"),
        path,
    )
    # fields this version does not know are kept, not rejected (teammates may extend the schema)
    data["extra"] = {k: data.pop(k) for k in sorted(set(data) - _DEVICE_FIELDS)}
    data.setdefault("description", "")
    data.setdefault("sm_arch", None)
    for k in ("power_modes", "efficiency", "network", "tensorrt"):
        if data.get(k) is None:
            data.pop(k, None)
    data["peak_tflops"] = {str(k): float(v) for k, v in data["peak_tflops"].items()}
    data["power_w"] = {str(k): float(v) for k, v in data["power_w"].items()}
    if "power_modes" in data:
        data["power_modes"] = {str(k): float(v) for k, v in data["power_modes"].items()}
    return DeviceSpec(**data)


@dataclass(frozen=True)
class ModelCard:
    """An LLM's architecture and source.

    ``params``, ``n_layers``, ``n_kv_heads``, ``head_dim`` size the weights and the KV cache
    (``2 * n_layers * n_kv_heads * head_dim`` values per token).

    A card comes from one of three places, all validated by :func:`model_card_from_dict`:

    - ``<dir>/<name>.yaml`` in a directory of the environment variable ``MOE2_MODEL_CARDS``
      (``os.pathsep``-separated, searched first, in order): your own models without editing the
      installed package;
    - ``conf/experts/models/<name>.yaml`` of the package;
    - inline in a pool file: a member's ``model`` given as a mapping of these fields instead of a
      card name (e.g. an OpenAI-compatible endpoint: ``backend: openai``,
      ``source: {endpoint: http://127.0.0.1:8000/v1, model: my-llm}``).
    """

    name: str
    params: int
    n_layers: int
    hidden_size: int
    n_kv_heads: int
    head_dim: int
    context_length: int
    backend: str = "transformers"
    source: dict[str, Any] = field(default_factory=dict)
    chat_template: bool = True
    description: str = ""
    #: fields of the YAML this version does not interpret
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in ("transformers", "openai"):
            raise ConfigError(
                f"model {self.name}: backend must be 'transformers' or 'openai', got {self.backend!r}"
            )
        for k in ("params", "n_layers", "hidden_size", "n_kv_heads", "head_dim", "context_length"):
            if int(getattr(self, k)) <= 0:
                raise ConfigError(f"model {self.name}: {k} must be a positive integer")

    def kv_values_per_token(self) -> int:
        """Numbers stored in the KV cache per token: K and V for every layer and KV head."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim


_CARD_FIELDS = {f.name for f in dataclasses.fields(ModelCard)}
_CARD_REQUIRED = (
    "name",
    "params",
    "n_layers",
    "hidden_size",
    "n_kv_heads",
    "head_dim",
    "context_length",
)
_CARD_INTS = ("params", "n_layers", "hidden_size", "n_kv_heads", "head_dim", "context_length")
#: environment variable: extra model card directories (os.pathsep-separated), searched first
CARDS_ENV = "MOE2_MODEL_CARDS"


def model_card_dirs() -> list[Path]:
    """Where model cards are looked up, in order: ``$MOE2_MODEL_CARDS`` entries, then the package's.

    Raises:
        ConfigError: an entry of ``MOE2_MODEL_CARDS`` is not a directory.
    """
    dirs = []
    for entry in os.environ.get(CARDS_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        d = Path(entry).expanduser()
        if not d.is_dir():
            raise ConfigError(
                f"{CARDS_ENV} lists {entry!r}, which is not a directory; fix or unset {CARDS_ENV} "
                f"(directories of <model>.yaml cards, separated by {os.pathsep!r})"
            )
        dirs.append(d)
    return [*dirs, _conf() / "experts" / "models"]


def list_model_cards() -> list[str]:
    """Names of the model cards in ``$MOE2_MODEL_CARDS`` directories and ``conf/experts/models/``."""
    return sorted({p.stem for d in model_card_dirs() for p in d.glob("*.yaml")})


def _as_int(value: Any, key: str, where: str) -> int:
    # YAML reads 7e9 as a string (YAML 1.1 needs 7.0e9): accept any integral number or numeral
    try:
        if isinstance(value, bool):
            raise ValueError
        f = float(value) if isinstance(value, (str, float)) else value
        if isinstance(f, float) and not f.is_integer():
            raise ValueError
        return int(f)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}") from None


def model_card_from_dict(data: Any, where: str) -> ModelCard:
    """Validate the fields of a model card (a card file's or an inline pool member's ``model``).

    Args:
        data: a mapping with ``name, params, n_layers, hidden_size, n_kv_heads, head_dim,
            context_length`` and optionally ``backend, source, chat_template, description``
            (other fields are kept in ``extra``). A DictConfig is accepted.
        where: what the data came from, for messages (a file, ``experts pool X: member 2 model``).

    Raises:
        ConfigError: not a mapping, a missing field, a non-integer size or an unknown backend.
    """
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(data, DictConfig):
            data = OmegaConf.to_container(data, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a base dependency
        pass
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: a model card must be a mapping of fields, got {type(data).__name__}"
        )
    data = dict(data)
    missing = [k for k in _CARD_REQUIRED if data.get(k) is None]
    if missing:
        raise ConfigError(
            f"{where}: missing model card field(s) {missing} (a card needs {list(_CARD_REQUIRED)})"
        )
    data["extra"] = {k: data.pop(k) for k in sorted(set(data) - _CARD_FIELDS)}
    for k in _CARD_INTS:
        data[k] = _as_int(data[k], k, where)
    source = data.get("source") or {}
    if not isinstance(source, dict):
        raise ConfigError(
            f"{where}: source must be a mapping (e.g. {{hf_id: ...}} or {{endpoint: ..., model: ...}}), "
            f"got {source!r}"
        )
    data["source"] = dict(source)
    data["name"] = str(data["name"])
    if "chat_template" in data:
        data["chat_template"] = bool(data["chat_template"])
    if data.get("description") is None:
        data.pop("description", None)
    try:
        return ModelCard(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_model_card(name: str) -> ModelCard:
    """Load ``<name>.yaml`` from the first card directory that has it.

    The directories are those of the environment variable ``MOE2_MODEL_CARDS`` (``os.pathsep``-
    separated, in order), then the package's ``conf/experts/models/`` (:func:`model_card_dirs`).

    Raises:
        ConfigError: unknown model (the message lists the known ones) or a malformed card.
    """
    for d in model_card_dirs():
        path = d / f"{name}.yaml"
        if path.is_file():
            return model_card_from_dict(_read_yaml(path, "model card"), str(path))
    raise ConfigError(
        f"unknown model {name!r}; known model cards: {', '.join(list_model_cards())} "
        f"(searched {', '.join(str(d) for d in model_card_dirs())}); add <name>.yaml to a directory "
        f"listed in {CARDS_ENV}, or give the member's model inline as a mapping of card fields"
    )


@dataclass(frozen=True)
class ExpertSpec:
    """One expert: a model on a device at a precision (DESIGN.md §1).

    Attributes:
        name: the expert's name (the column name in the outcome tables).
        model: its :class:`ModelCard`.
        device: its :class:`DeviceSpec` (power mode already applied).
        precision: weight storage precision (a key of :data:`BYTES_PER_PARAM`).
        instance: which box of that device type it runs on; ``None``: a box of its own.
    """

    name: str
    model: ModelCard
    device: DeviceSpec
    precision: str
    instance: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in BYTES_PER_PARAM:
            raise ConfigError(
                f"expert {self.name}: precision {self.precision!r} is not one of {sorted(BYTES_PER_PARAM)}"
            )

    @property
    def bytes_per_param(self) -> float:
        """Bytes per weight at this precision."""
        return BYTES_PER_PARAM[self.precision]

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights: ``params * bytes_per_param``."""
        return int(round(self.model.params * self.bytes_per_param))

    @property
    def placement(self) -> str:
        """The memory domain this expert lives in: ``device#instance`` (``device#<name>`` if unset)."""
        return f"{self.device.name}#{self.instance if self.instance is not None else self.name}"


_MEMBER_KEYS = {"name", "model", "device", "precision", "instance", "power_mode"}


def _as_dict(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, dict):
        return cfg
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a base dependency
        pass
    raise ConfigError(
        f"an experts pool must be a mapping {{name, members}}, got {type(cfg).__name__}"
    )


def list_pools() -> list[str]:
    """Names of the pools in ``conf/experts/``."""
    return sorted(p.stem for p in (_conf() / "experts").glob("*.yaml"))


def load_pool(experts_cfg: Any) -> list[ExpertSpec]:
    """The experts of a pool config, in member order.

    Args:
        experts_cfg: the ``experts`` group config (``{name, members: [...]}``, DictConfig or
            dict), or a pool name from ``conf/experts/``.

    Returns:
        One :class:`ExpertSpec` per member.

    Raises:
        ConfigError: unknown pool/model/device, duplicate names, or an instance whose experts'
            weights alone exceed its memory.
    """
    if isinstance(experts_cfg, str):
        path = _conf() / "experts" / f"{experts_cfg}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown experts pool {experts_cfg!r}; known pools: {', '.join(list_pools())}"
            )
        experts_cfg = _read_yaml(path, "experts pool")
    cfg = _as_dict(experts_cfg)
    pool_name = cfg.get("name", "<pool>")
    members = cfg.get("members")
    if not members:
        raise ConfigError(
            f"experts pool {pool_name}: 'members' is empty; list {{name, model, device, precision}}"
        )
    devices: dict[str, DeviceSpec] = {}
    cards: dict[str, ModelCard] = {}
    pool: list[ExpertSpec] = []
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            raise ConfigError(f"experts pool {pool_name}: member {i} must be a mapping, got {m!r}")
        unknown = set(m) - _MEMBER_KEYS
        if unknown:
            raise ConfigError(
                f"experts pool {pool_name}: member {i} has unknown key(s) {sorted(unknown)}; keys are {sorted(_MEMBER_KEYS)}"
            )
        missing = [k for k in ("model", "device", "precision") if not m.get(k)]
        if missing:
            raise ConfigError(f"experts pool {pool_name}: member {i} lacks {missing}")
        dev_name = str(m["device"])
        if dev_name not in devices:
            devices[dev_name] = load_device(dev_name)
        device = devices[dev_name].with_power_mode(m.get("power_mode"))
        if isinstance(m["model"], dict):  # an inline card: the pool file describes the model
            card = model_card_from_dict(m["model"], f"experts pool {pool_name}: member {i} model")
        else:
            card = load_model_card(str(m["model"]))
        # stages key loaded models by card name (one load per model): one name, one card
        other = cards.setdefault(card.name, card)
        if other != card:
            raise ConfigError(
                f"experts pool {pool_name}: member {i} describes model {card.name!r} differently from "
                "an earlier member; give the inline card another name or make the two identical"
            )
        inst = m.get("instance")
        pool.append(
            ExpertSpec(
                name=str(m.get("name") or card.name),
                model=card,
                device=device,
                precision=str(m["precision"]),
                instance=None if inst is None else str(inst),
            )
        )
    names = [e.name for e in pool]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"experts pool {pool_name}: expert name(s) {dup} appear twice; give members distinct names"
        )
    # weights alone must fit each instance (the KV cache is checked by the memory budget)
    for placement, used in placement_weight_bytes(pool).items():
        cap = next(e.device.capacity_bytes for e in pool if e.placement == placement)
        if used > cap:
            who = [e.name for e in pool if e.placement == placement]
            raise ConfigError(
                f"experts pool {pool_name}: the weights of {who} on {placement} need {used / 1e9:.1f} GB but the "
                f"device holds {cap / 1e9:.1f} GB; use a lower precision or another instance"
            )
    return pool


def placement_weight_bytes(pool: list[ExpertSpec]) -> dict[str, int]:
    """Total weight bytes per placement (``device#instance``)."""
    out: dict[str, int] = {}
    for e in pool:
        out[e.placement] = out.get(e.placement, 0) + e.weight_bytes
    return out


def experts_table(pool: list[ExpertSpec]) -> pd.DataFrame:
    """The ``experts`` outcome table (schema of :mod:`moe2.data.tables`) for a pool.

    ``device`` is the device type; the extra column ``placement`` is ``device#instance``. Prices are
    left empty (they come from imported data).
    """
    return pd.DataFrame(
        {
            "name": [e.name for e in pool],
            "model": [e.model.name for e in pool],
            "device": [e.device.name for e in pool],
            "params": [int(e.model.params) for e in pool],
            "bytes": [int(e.weight_bytes) for e in pool],
            "precision": [e.precision for e in pool],
            "input_price": [float("nan")] * len(pool),
            "output_price": [float("nan")] * len(pool),
            "placement": [e.placement for e in pool],
        }
    )
