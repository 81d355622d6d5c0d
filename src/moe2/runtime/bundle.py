"""Load a verified bundle and answer prompts: gate (ONNX Runtime) -> top-k experts of the bundle
-> run them (ONNX Runtime, or TensorRT engines when built here) -> aggregate.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moe2.data.validate import check_prompt
from moe2.errors import BundleError, ConfigError, DataError
from moe2.format.cost_routing import CostRouting, Knob
from moe2.utils.io import read_json

log = logging.getLogger(__name__)

Backend = Literal["auto", "onnxruntime", "tensorrt"]


@dataclass
class ExpertUse:
    """One routed expert of an answer."""

    name: str
    weight: float  # renormalised gate weight over the top-k
    answer: str
    tokens: int
    seconds: float
    est_latency_ms: float | None
    est_energy_j: float | None
    logprobs: list[float] | None = None  # per choice, when choices were given


@dataclass
class Answer:
    """The result of :meth:`Bundle.ask`."""

    prompt: str
    answer: str
    aggregation: str
    experts: list[ExpertUse]
    gate_weights: dict[str, float]  # softmax of the gate restricted to the bundle's subset
    est_latency_ms: float | None  # experts run in parallel on their devices: the slowest one
    est_energy_j: float | None  # summed over the routed experts
    category: str | None
    backend: str
    seconds: float
    choice_probs: list[float] | None = None
    notes: list[str] = field(default_factory=list)
    #: predicted cost of the routed experts ``{metric, unit, value, source, lambda, category}``
    #: (bundles with cost routing; ``None`` otherwise)
    cost: dict[str, Any] | None = None
    #: per expert of the subset ``{quality, cost, score}`` of the cost-aware rule (or ``None``)
    scores: dict[str, dict[str, float]] | None = None


@dataclass
class Scores:
    """What the gate says about one prompt, over the bundle's subset.

    Attributes:
        weights: the gate's softmax restricted to the subset (aggregation weights).
        quality: ``q_e`` of the cost-aware rule (``None`` without cost routing).
        cost: predicted cost of one request to each expert (``None`` without cost routing).
        score: ``q_e - lam * cost_e`` (``None`` without cost routing).
        lam: the lambda used (``None`` without cost routing).
    """

    weights: dict[str, float]
    quality: dict[str, float] | None = None
    cost: dict[str, float] | None = None
    score: dict[str, float] | None = None
    lam: float | None = None

    def ranking(self) -> list[str]:
        """The subset, best first: by score with cost routing, else by gate weight."""
        key = self.score if self.score is not None else self.weights
        return [e for e, _ in sorted(key.items(), key=lambda kv: -kv[1])]

    def table(self) -> dict[str, dict[str, float]] | None:
        """``{expert: {quality, cost, score}}`` (``None`` without cost routing)."""
        if self.score is None or self.quality is None or self.cost is None:
            return None
        return {
            e: {"quality": self.quality[e], "cost": self.cost[e], "score": self.score[e]}
            for e in self.score
        }


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


class Bundle:
    """A verified bundle, ready to answer prompts (use :func:`load_bundle`).

    Args:
        path: the bundle directory.
        manifest: its verified manifest.
        backend: ``auto`` (TensorRT engines when built for this GPU and tensorrt imports, else
            ONNX Runtime), ``onnxruntime`` or ``tensorrt`` (error if engines cannot run here).
        threads: ONNX Runtime intra-op threads.
        int8_gate: use the int8 gate when the bundle ships one.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        backend: Backend = "auto",
        threads: int | None = None,
        int8_gate: bool = True,
    ):
        from moe2.format.sessions import OrtGate, load_tokenizer, ort_session

        self.path = path
        self.manifest = manifest
        self.routing = read_json(self._file("routing.json", "the bundle"))
        self.threads = threads
        #: why the bundle runs on ONNX Runtime although it has engines (shown with every answer)
        self.notes: list[str] = []
        gate_info = read_json(self._file("gate/gate.json", "the bundle"))
        self.engine_target = self._engine_target(backend)
        self.backend = "tensorrt" if self.engine_target else "onnxruntime"
        gate_name = gate_info["int8"] if int8_gate and gate_info.get("int8") else gate_info["onnx"]
        # every path read from a bundle file goes through the manifest's file list
        gate_file = self._file((Path("gate") / str(gate_name)).as_posix(), "gate/gate.json")
        session: Any
        if self.engine_target:
            from moe2.format.engines import TrtEngine, TrtSession

            session = TrtSession(TrtEngine(self._engine_file("gate"), self._engine_module))
        else:
            session = ort_session(gate_file, threads)
        self.gate = OrtGate.from_gate_json(
            session, load_tokenizer(self._dir("gate/tokenizer", "the bundle")), gate_info
        )
        self.gate_file = gate_file.name
        self.subset: list[str] = list(self.routing["subset"])
        #: experts of the subset that run at an endpoint (no weights in the bundle), by name:
        #: their ``manifest.json["endpoints"]`` record (``url``: ``None`` until deployment)
        self.endpoints: dict[str, dict[str, Any]] = {
            e["name"]: e for e in manifest.get("endpoints", [])
        }
        stray = sorted(set(self.endpoints) - set(self.subset))
        if stray:
            raise BundleError(
                f"manifest.json endpoints {stray} are not in routing.json's subset {self.subset}; "
                "the bundle is inconsistent, re-export it"
            )
        self.subset_index = np.asarray(self.routing["subset_index"], dtype=np.int64)
        self.k = int(self.routing["k"])
        self.aggregation = str(self.routing["aggregation"])
        self._lms: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}
        self._generation: dict[str, dict[str, Any]] = {}
        cp = self.routing.get("cost_profile")
        self.cost = cp if cp and cp.get("experts") else None
        self.cost_routing = self._read_cost_routing()

    def _read_cost_routing(self) -> CostRouting | None:
        """``routing.json["cost_routing"]`` checked, or ``None`` (a bundle without cost routing)."""
        block = self.routing.get("cost_routing")
        if block is None:
            return None
        where = "routing.json cost_routing"
        cr = CostRouting.from_dict(block, where)
        cr.check_subset(self.subset, where)
        if cr.quality == "correctness" and not self.gate.correctness:
            raise BundleError(
                f"{where}.quality is 'correctness' but the gate has no correct_logits output "
                "(gate/gate.json); the bundle is inconsistent, re-export it"
            )
        return cr

    def knob(
        self, lam: float | None = None, mean_budget: float | None = None, prefix: str = "routing"
    ) -> Knob | None:
        """The cost-aware rule's knob for a setting (``None``: no cost routing).

        Args:
            lam: lambda itself, within the calibrated range.
            mean_budget: an average cost per request, mapped through the calibration curve (to
                a mixture of two lambdas when the bundle was selected with mixing).
                (Neither: the calibrated knob.)
            prefix: how the messages name the keys (``routing`` config, ``moe2`` request body).

        Raises:
            ConfigError: a knob on a bundle without cost routing, both given, or a value
                outside the calibrated range (named in the message).
        """
        if self.cost_routing is None:
            if lam is not None or mean_budget is not None:
                raise ConfigError(
                    "this bundle has no cost routing (routing.json has no cost_routing), so "
                    f"{prefix}.lambda / {prefix}.mean_budget do not apply; export it from a "
                    "selection made with budget.mean.<metric>=..."
                )
            return None
        return self.cost_routing.resolve(lam, mean_budget, prefix)

    # ------------------------------------------------------------------ files
    def _file(self, rel: str, what: str) -> Path:
        from moe2.format.manifest import bundle_file

        return bundle_file(self.path, self.manifest, rel, what)

    def _dir(self, rel: str, what: str) -> Path:
        from moe2.format.manifest import bundle_dir

        return bundle_dir(self.path, self.manifest, rel, what)

    def expert_dir(self, expert: str) -> str:
        """The bundle-relative directory of ``expert``: routing.json's, one the manifest lists."""
        dirs = self.routing.get("expert_dirs") or {}
        if expert in self.endpoints:
            from moe2.format.manifest import no_endpoint_url

            raise no_endpoint_url([expert])
        if expert not in dirs:
            raise BundleError(f"routing.json has no directory for expert {expert!r}; re-export")
        rel = dirs[expert]
        if rel not in {e["dir"] for e in self.manifest["experts"]}:
            raise BundleError(
                f"routing.json names {rel!r} for expert {expert!r}, which is not an expert "
                "directory of manifest.json; the bundle is tampered or corrupt, re-export it"
            )
        self._dir(rel, "routing.json")
        return str(rel)

    # ------------------------------------------------------------------ backends
    def _engine_target(self, backend: Backend) -> str | None:
        """The target whose engines run here, or ``None`` for ONNX Runtime.

        ``auto`` takes engines built for this GPU's architecture when their builder module imports
        at the version that built them, and otherwise says why (a note on every answer) and uses
        ONNX Runtime; ``tensorrt`` raises instead.
        """
        if backend not in ("auto", "onnxruntime", "tensorrt"):
            raise ConfigError(f"backend must be auto, onnxruntime or tensorrt, got {backend!r}")
        if backend == "onnxruntime":
            return None
        from moe2.format.arch import local_sm_arch

        engines = self.manifest.get("engines", {})
        if not engines:
            if backend == "tensorrt":
                raise BundleError(
                    "this bundle has no TensorRT engines; run `moe2 build-engines BUNDLE target=<target>`"
                )
            return None
        try:
            return engine_target_for(engines, local_sm_arch())
        except BundleError as exc:
            if backend == "tensorrt":
                raise
            self.notes.append(f"{exc}; using ONNX Runtime")
            log.warning("%s; using ONNX Runtime", exc)
            return None

    @property
    def _engine_module(self) -> str:
        return str(self.manifest["engines"][self.engine_target]["builder"]["module"])

    def _engine_file(self, component: str) -> Path:
        entry = self.manifest["engines"][self.engine_target]
        for e in entry["engines"]:
            if e["component"] == component:
                return self._file(e["engine"], f"manifest.json engines.{self.engine_target}")
        raise BundleError(f"no {component} engine for {self.engine_target} in the manifest")

    def tokens(self, expert: str) -> tuple[Any, dict[str, Any]]:
        """The tokenizer and ``generation.json`` of ``expert``, without loading its graph."""
        from moe2.format.sessions import load_tokenizer

        rel = self.expert_dir(expert)
        if rel not in self._tokenizers:
            self._tokenizers[rel] = load_tokenizer(self._dir(f"{rel}/tokenizer", "the bundle"))
            self._generation[rel] = read_json(self._file(f"{rel}/generation.json", "the bundle"))
        return self._tokenizers[rel], self._generation[rel]

    def context_length(self, expert: str, configured: int | None = None) -> int | None:
        """The context of ``expert`` in tokens, ``None``: unknown (see
        :func:`moe2.format.tokenize.context_length`: configured, model card and graph, tokenizer).
        """
        from moe2.format.tokenize import context_length

        rel = self.expert_dir(expert)
        spec = read_json(self._file(f"{rel}/export_spec.json", "the bundle"))
        positions = (spec.get("meta") or {}).get("max_position_embeddings")
        entry = next(e for e in self.manifest["experts"] if e["name"] == expert)
        return context_length(entry, self.tokens(expert)[0], configured, positions)

    def _lm(self, expert: str) -> tuple[Any, Any, dict[str, Any]]:
        from moe2.format.sessions import OrtCausalLM, ort_session
        from moe2.format.specs import spec_from_file

        tok, gen = self.tokens(expert)
        rel = self.expert_dir(expert)
        if rel not in self._lms:
            spec = spec_from_file(self._file(f"{rel}/export_spec.json", "the bundle"))
            if self.engine_target:
                from moe2.format.engines import TrtCausalLM, TrtEngine

                self._lms[rel] = TrtCausalLM(
                    TrtEngine(self._engine_file(f"expert:{rel}"), self._engine_module), spec
                )
            else:
                onnx = self._file(f"{rel}/model.onnx", "the bundle")
                self._lms[rel] = OrtCausalLM(ort_session(onnx, self.threads), spec)
        return self._lms[rel], tok, gen

    # ------------------------------------------------------------------ routing
    @property
    def gate_categories(self) -> list[str]:
        """The categories the gate takes as an input (``[]``: the graph takes none)."""
        return list(self.gate.categories)

    def category_note(self, category: str | None) -> str | None:
        """Why ``category`` routes as "category not known" (a name the gate was not trained
        on), or ``None``; an unknown name is never an error."""
        return self.gate.category_note(category)

    def gate_weights(self, prompt: str, category: str | None = None) -> dict[str, float]:
        """The gate's softmax over the bundle's subset (the other experts masked out).

        ``category``: the prompt's category, fed to a gate with a category input (a name it
        does not know, or ``None``, routes as "category unknown"; a gate without the input, as
        in older bundles, ignores it).
        """
        return self.gate_weights_many([prompt], [category])[0]

    def gate_weights_many(
        self, prompts: Sequence[str], categories: Sequence[str | None]
    ) -> list[dict[str, float]]:
        """:meth:`gate_weights` of several prompts from one run of the gate (padded to the
        longest, as in training): what a server batching concurrent requests calls."""
        return [self._weights(row) for row in self.gate.logits(list(prompts), list(categories))]

    def _weights(self, logits: np.ndarray) -> dict[str, float]:
        """Softmax of the logits ``[E_all]`` restricted to the subset."""
        w = _softmax(logits[self.subset_index].astype(np.float64))
        return dict(zip(self.subset, w.tolist(), strict=True))

    def scores(
        self, prompt: str, category: str | None = None, lam: float | Knob | None = None
    ) -> Scores:
        """The gate's weights over the subset and, with cost routing, the rule's scores
        ``q_e - lam * c_e(category)`` (``lam``: a number, or a :meth:`knob`, whose lambda for
        this prompt is used; ``None``: the calibrated lambda), from one run of the gate;
        ``category`` also goes to a gate with a category input (see :meth:`gate_weights`)."""
        cr = self.cost_routing
        if cr is None or cr.quality != "correctness":
            weights = self.gate_weights(prompt, category)
            if cr is None:
                return Scores(weights)
            correct = None
        else:
            logits, correct = self.gate.outputs([prompt], [category])  # [1, E_all] each
            weights = self._weights(logits[0])
        if lam is None:
            lam = cr.lam
        lam = lam.at(prompt) if isinstance(lam, Knob) else float(lam)
        if correct is not None:
            q = 1.0 / (1.0 + np.exp(-correct[0][self.subset_index].astype(np.float64)))
            quality = dict(zip(self.subset, q.tolist(), strict=True))
        else:  # "softmax": the gate's distribution over the subset, as select scored it
            quality = dict(weights)
        cost = cr.costs(category)
        cost = {e: cost[e] for e in self.subset}
        return Scores(weights, quality, cost, cr.scores(quality, category, lam), lam)

    def route(
        self,
        prompt: str,
        k: int | None = None,
        category: str | None = None,
        lam: float | Knob | None = None,
        scores: Scores | None = None,
    ) -> list[tuple[str, float]]:
        """Top-k experts of the subset with gate weights renormalised over those k.

        ``category`` goes to the gate (when it takes one) and to the cost-aware rule. With cost
        routing the top-k are by the rule's score at ``lam`` (default: the calibrated
        lambda); ``scores`` reuses a :meth:`scores` result instead of running the gate again.
        """
        k = self.k if k is None else int(k)
        if not 1 <= k <= len(self.subset):
            raise ConfigError(f"k must be between 1 and {len(self.subset)}, got {k}")
        s = scores if scores is not None else self.scores(prompt, category, lam)
        top = [(e, s.weights[e]) for e in s.ranking()[:k]]
        total = sum(w for _, w in top)
        return [(e, w / total) for e, w in top]

    def estimate(self, expert: str, category: str | None) -> tuple[float | None, float | None]:
        """Latency (ms) and energy (J) of one request to ``expert`` from the cost profile.

        With an unknown or absent category, the mean over the profile's categories. A figure the
        profile does not have (hosted experts: null in the bundle) is ``None``, never NaN.
        """
        if self.cost is None or expert not in self.cost["experts"]:
            return None, None
        i = self.cost["experts"].index(expert)
        # null (no figure) reads as NaN here and leaves as None
        lat = np.asarray(self.cost["latency_ms"], dtype=float)[i]
        en = np.asarray(self.cost["energy_j"], dtype=float)[i]
        cats = list(self.cost["categories"])

        def known(v: np.ndarray) -> float | None:
            v = v[np.isfinite(v)]
            return float(v.mean()) if v.size else None

        if category in cats:
            j = cats.index(category)
            return known(lat[j : j + 1]), known(en[j : j + 1])
        return known(lat), known(en)

    # ------------------------------------------------------------------ answering
    def ask(
        self,
        prompt: str,
        choices: Sequence[str] | None = None,
        max_new_tokens: int | None = None,
        k: int | None = None,
        aggregation: str | None = None,
        category: str | None = None,
        lam: float | None = None,
        mean_budget: float | None = None,
        remote: dict[str, Any] | None = None,
    ) -> Answer:
        """Answer ``prompt`` with the bundle.

        Args:
            prompt: the question.
            choices: options of a multiple-choice question (enables ``mixture`` over options).
            max_new_tokens: generation length (default: the bundle's).
            k: experts to route to (default: the bundle's k).
            aggregation: ``top1``, ``mixture`` or ``vote`` (default: the bundle's).
            category: the prompt's category: an input of a gate with categories (a name it was
                not trained on routes as unknown, with a note), and the key of the cost
                estimates (default: mean over categories) and of the cost-aware rule's predicted
                costs (default: the bundle's per-expert default cost).
            lam: the cost-aware rule's lambda, within the calibrated range (bundles with cost
                routing; default: the calibrated lambda).
            mean_budget: instead of ``lam``, an average cost per request, mapped to lambda
                through the calibration curve.
            remote: experts called at an OpenAI-compatible endpoint instead of in this process,
                by name (a :class:`moe2.experts.openai.OpenAIExpert`: ``generate`` and
                ``score_choices``); every expert that runs at an endpoint (:attr:`endpoints`)
                and is routed to must be here (the others need not be).
        """
        import time

        from moe2.format.tokenize import context_overflow, option_ids, prompt_ids

        start = time.perf_counter()
        check_prompt(prompt, choices)  # empty prompt, bad UTF-8, < 2 or repeated options
        agg = aggregation or self.aggregation
        from moe2.format.manifest import AGGREGATIONS

        if agg not in AGGREGATIONS:
            raise ConfigError(f"aggregation {agg!r} is not one of {AGGREGATIONS}")
        notes: list[str] = list(self.notes)
        note = self.category_note(category)
        if note:
            notes.append(note)
        lam = self.knob(lam, mean_budget)  # a bad knob fails before the gate runs
        scores = self.scores(prompt, category, lam)
        weights = scores.weights
        routed = self.route(prompt, k, scores=scores)
        if agg == "top1":
            routed = routed[:1]
            routed = [(routed[0][0], 1.0)]
        remote = dict(remote or {})
        unplaced = [n for n, _w in routed if n in self.endpoints and n not in remote]
        if unplaced:  # only the routed ones need a URL; the error shows the deployment to write
            from moe2.format.manifest import no_endpoint_url

            raise no_endpoint_url(unplaced)
        # every routed expert's context is checked before any expert runs (an endpoint expert's
        # tokenizer is its server's: it checks there)
        prompts: dict[str, list[int]] = {}
        for name, _w in routed:
            if name in self.endpoints:
                continue
            tok, gen = self.tokens(name)
            ids = prompts[name] = prompt_ids(tok, prompt, bool(gen.get("chat_template")))
            if choices:
                n_new = max(len(option_ids(tok, c)) for c in choices)
            else:
                n_new = int(max_new_tokens or gen.get("max_new_tokens", 64))
            why = context_overflow(len(ids), n_new, self.context_length(name))
            if why:
                raise DataError(
                    f"prompt: too long for expert {name!r}: {why}; shorten the prompt"
                    + ("" if choices else " or lower max_new_tokens")
                )
        uses: list[ExpertUse] = []
        for name, w in routed:
            t0 = time.perf_counter()
            logprobs = None
            if name in remote:
                text, n_tokens, logprobs = self._ask_remote(
                    remote[name], name, prompt, choices, max_new_tokens
                )
                lat, en = self.estimate(name, category)
                uses.append(
                    ExpertUse(
                        name, float(w), text, n_tokens, time.perf_counter() - t0, lat, en, logprobs
                    )
                )
                continue
            lm, tok, gen = self._lm(name)
            ids = prompts[name]
            if choices:
                logprobs = [lm.continuation_logprob(ids, option_ids(tok, c)) for c in choices]
                text = choices[int(np.argmax(logprobs))]
                n_tokens = 0
            else:
                n = int(max_new_tokens or gen.get("max_new_tokens", 64))
                out = lm.greedy(ids, n, gen.get("eos_token_ids", []))
                eos = set(gen.get("eos_token_ids", []))
                text = tok.decode(
                    [t for t in out if t not in eos], skip_special_tokens=True
                ).strip()
                n_tokens = len(out)
            lat, en = self.estimate(name, category)
            uses.append(
                ExpertUse(
                    name, float(w), text, n_tokens, time.perf_counter() - t0, lat, en, logprobs
                )
            )
        answer, probs = self._aggregate(agg, uses, choices, notes)
        lats = [u.est_latency_ms for u in uses if u.est_latency_ms is not None]
        ens = [u.est_energy_j for u in uses if u.est_energy_j is not None]
        return Answer(
            prompt=prompt,
            answer=answer,
            aggregation=agg,
            experts=uses,
            gate_weights=weights,
            est_latency_ms=max(lats) if len(lats) == len(uses) else None,
            est_energy_j=float(sum(ens)) if len(ens) == len(uses) else None,
            category=category,
            backend=self.backend,
            seconds=time.perf_counter() - start,
            choice_probs=probs,
            notes=notes,
            cost=None
            if self.cost_routing is None
            else self.cost_routing.cost_of([u.name for u in uses], category, scores.lam),
            scores=scores.table(),
        )

    def _ask_remote(
        self,
        client: Any,
        name: str,
        prompt: str,
        choices: Sequence[str] | None,
        max_new_tokens: int | None,
    ) -> tuple[str, int, list[float] | None]:
        """One expert's answer from its endpoint: the text, its tokens, option log-probs."""
        if choices:
            logprobs = [float(v) for v in client.score_choices([prompt], [list(choices)])[0]]
            return choices[int(np.argmax(logprobs))], 0, logprobs
        if max_new_tokens is None and name not in self.endpoints:
            max_new_tokens = int(self.tokens(name)[1].get("max_new_tokens", 64))
        g = client.generate([prompt], int(max_new_tokens or 64))[0]
        return g.text.strip(), int(g.output_tokens), None

    @staticmethod
    def _aggregate(
        agg: str, uses: list[ExpertUse], choices: Sequence[str] | None, notes: list[str]
    ) -> tuple[str, list[float] | None]:
        if agg == "top1" or len(uses) == 1:
            return uses[0].answer, None
        if agg == "mixture" and choices:
            # sum_e w_e p_e(y|x) over the options, each expert's distribution normalised over them
            mix = np.zeros(len(choices))
            for u in uses:
                lp = np.asarray(u.logprobs, dtype=float)
                mix += u.weight * _softmax(lp)
            return choices[int(np.argmax(mix))], mix.tolist()
        if agg == "mixture":
            notes.append(
                "mixture needs answer options (choices); free-form answers were combined by gate-weighted vote"
            )
        # vote: majority of (normalised) answers; ties go to the larger total gate weight
        count: Counter[str] = Counter()
        weight: dict[str, float] = {}
        first: dict[str, str] = {}
        for u in uses:
            key = " ".join(u.answer.lower().split())
            count[key] += 1
            weight[key] = weight.get(key, 0.0) + u.weight
            first.setdefault(key, u.answer)
        best = max(
            count, key=lambda a: (count[a], weight[a]) if agg == "vote" else (weight[a], count[a])
        )
        return first[best], None


def engine_target_for(engines: dict[str, Any], local: str | None) -> str:
    """The target of ``engines`` (the manifest's) that can run on a GPU of arch ``local``.

    Raises:
        BundleError: no GPU here, no engines for this GPU's compute capability, the builder
            module is not installed (with its install command), or it has another version than
            the one that built the engines.
    """
    from moe2.format.engines import BUILDERS

    built = ", ".join(
        f"{t} ({e.get('sm_arch')}, {e.get('builder', {}).get('module')})"
        for t, e in engines.items()
    )
    match = [t for t, e in engines.items() if e.get("sm_arch") == local]
    if not match:
        raise BundleError(
            f"the bundle's engines are for {built}, but this machine's GPU is {local or 'absent'}: "
            "engines run only on the compute capability they were built for"
        )
    target = match[0]
    builder = engines[target]["builder"]
    module = str(builder["module"])
    try:
        import importlib

        trt = importlib.import_module(module)
    except ImportError as exc:
        hint = BUILDERS.get(module, {}).get("install", f"pip install {module}")
        raise BundleError(
            f"the {target} engines need {module}, which is not installed here ({exc}); install it "
            f"with: {hint}"
        ) from exc
    if str(trt.__version__) != str(builder["version"]):
        raise BundleError(
            f"the {target} engines were built with {module} {builder['version']}, this machine has "
            f"{trt.__version__}: rebuild them with `moe2 build-engines BUNDLE target={target}`"
        )
    return target


def load_bundle(
    path: str | os.PathLike[str],
    backend: Backend = "auto",
    threads: int | None = None,
    int8_gate: bool = True,
) -> Bundle:
    """Verify a bundle (checksums, manifest, parity records) and load it for :meth:`Bundle.ask`.

    Raises:
        BundleError: a missing or modified file, a newer format, failed parity, or engines that
            cannot run here when ``backend="tensorrt"``.
    """
    from moe2.format.manifest import verify_bundle

    root = Path(path)
    manifest = verify_bundle(root)
    return Bundle(root, manifest, backend=backend, threads=threads, int8_gate=int8_gate)
