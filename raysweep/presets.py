"""Paper defaults, selected in a job with ``unlearn.preset: paper``.

One table, one entry per method/objective setting, each citing the section of
docs/methods.md its values come from. An entry applies when all its conditions hold for the job
(``forget``: the forget objective, ``method``: the synthesis method, ``benchmark`` and
``forget_split`` of ``data``); later entries override earlier ones, and a value the job file
(or a ``--set`` override) gives explicitly always wins over the preset.

Where the spec has no number for a setting (MGDA's hyperparameters, NGDiff's AutoLR interval,
PCGrad-R's weights for NPO, whose bio and cyber configs disagree), the preset leaves the
implementation's default. Warm-up (one epoch in the TOFU repo) depends on the data size, so it
is left to the job. Presets are applied by ``raysweep.spec.parse_job``, before validation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

@dataclass(frozen=True)
class PresetEntry:
    section: str  # "unlearn" (fields of the unlearn block), or "forget"/"retain"/"method"
    name: Optional[str]  # the objective or method the values belong to; None for "unlearn"
    values: Mapping[str, Any]
    spec: str  # where the values come from in docs/methods.md
    when: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FromForget:
    """A value copied from the (preset-filled) forget block, e.g. RMU's retain layer, which must
    be the layer the forget loss steers (spec 2.7)."""

    key: str


def _entry(section: str, name: Optional[str], values: dict, spec: str, **when: Any) -> PresetEntry:
    return PresetEntry(section, name, values, spec, when)


PAPER: tuple[PresetEntry, ...] = (
    # -- optimiser (the unlearn block) ----------------------------------------------------------
    _entry("unlearn", None, {"lr": 1e-5}, "spec 2.1, 2.4, 2.5, 4.3, 6.3: lr 1e-5 (TOFU, MUSE, SAGO, GRU)"),
    _entry("unlearn", None, {"weight_decay": 0.01, "schedule": "linear"},
           "spec 2.1: TOFU repo, AdamW weight decay 0.01, HF linear decay", benchmark="tofu"),
    _entry("unlearn", None, {"lr": 5e-5}, "spec 2.7: RMU lr 5e-5 (official Zephyr, SAGO's port)", forget="rmu"),
    _entry("unlearn", None, {"schedule": "constant", "weight_decay": 0.01},
           "spec 6.3: GRU constant lr (warm-up forced to 0), weight decay 0.01", method="gru"),
    # -- forget objectives ----------------------------------------------------------------------
    _entry("forget", "npo", {"beta": 0.1}, "spec 2.4: NPO β = 0.1 (TOFU, MUSE)"),
    _entry("forget", "simnpo", {"beta": 2.5, "delta": 0.0},
           "spec 2.5: SimNPO TOFU forget05 (also forget01, which has no published value)", benchmark="tofu"),
    _entry("forget", "simnpo", {"beta": 4.5, "delta": 0.0}, "spec 2.5: SimNPO TOFU forget10",
           benchmark="tofu", forget_split="forget10"),
    _entry("forget", "simnpo", {"beta": 0.7, "delta": 0.1}, "spec 2.5: SimNPO MUSE News", benchmark="muse"),
    _entry("forget", "idkdpo", {"beta": 0.1, "loss_scale": None}, "spec 2.6: IdkDPO β = 0.1, c = 2/β (open-unlearning)"),
    _entry("forget", "wga", {"alpha": 1.0}, "spec 8.3: WGA α = 1 (the authors' open-unlearning config)"),
    _entry("forget", "tnpo", {"beta": 4.0}, "spec 8.3: TNPO β = 4 (G-effect code)"),
    _entry("forget", "wtnpo", {"beta": 4.0, "alpha": 1.5}, "spec 8.3: WTNPO β = 4, α = 1.5 (G-effect code)"),
    _entry("forget", "rmu", {"layer": 7, "steering_coeff": 6.5}, "spec 2.7: official Zephyr-7B RMU, ℓ = 7, c = 6.5"),
    _entry("retain", "rmu_retain", {"layer": FromForget("layer")}, "spec 2.7: retain activations at the same ℓ"),
    # -- synthesis methods (their weights depend on the forget objective) -----------------------
    _entry("method", "graddiff", {"gamma": 1.0, "alpha": 1.0}, "spec 2.2, 2.4, 2.6: GD, NPO+RT, IdkDPO: γ = α = 1"),
    _entry("method", "graddiff", {"gamma": 0.1375, "alpha": 1.0}, "spec 2.5: SimNPO TOFU forget05 c_f = 0.1375, c_r = 1",
           forget="simnpo", benchmark="tofu"),
    _entry("method", "graddiff", {"gamma": 0.125, "alpha": 1.0}, "spec 2.5: SimNPO TOFU forget10 c_f = 0.125, c_r = 1",
           forget="simnpo", benchmark="tofu", forget_split="forget10"),
    _entry("method", "graddiff", {"gamma": 1.0, "alpha": 0.1}, "spec 2.5: SimNPO MUSE c_f = 1, c_r = 0.1",
           forget="simnpo", benchmark="muse"),
    _entry("method", "graddiff", {"gamma": 1.0, "alpha": 1200.0}, "spec 2.7: official Zephyr RMU, α = 1200", forget="rmu"),
    _entry("method", "sago", {"gamma": 1.0, "alpha": 1.0}, "spec 4.3: GradDiff+SAGO, NPO+SAGO on RWKU: α = γ = 1"),
    _entry("method", "sago", {"gamma": 1.0, "alpha": 0.1}, "spec 4.3: SimNPO+SAGO (WMDP, RWKU): γ = 1, α = 0.1",
           forget="simnpo"),
    _entry("method", "pcgrad_r", {"scope": "module"}, "spec 4.2: module-wise is the paper's default"),
    _entry("method", "pcgrad_r", {"gamma": 1.0, "alpha": 1.0}, "spec 4.3: GradDiff+PCGrad γ = α = 1", forget="ga"),
    _entry("method", "pcgrad_r", {"gamma": 1.0, "alpha": 0.1}, "spec 4.3: SimNPO+PCGrad γ = 1, α = 0.1", forget="simnpo"),
    _entry("method", "ngdiff", {"autolr": True}, "spec 5: NGDiff runs with its adaptive learning rate (AutoLR)"),
    _entry("method", "gru", {"mu": 0.8}, "spec 6.2, 6.3: GRU μ = 0.8 (official config)"),
    _entry("method", "gru", {"alpha": 0.1}, "spec 6.1: the SimNPO+GD base has retain weight 0.1", forget="simnpo"),
)

PRESETS: dict[str, tuple[PresetEntry, ...]] = {"paper": PAPER}


def _name(block: Any) -> Optional[str]:
    return block.get("name") if isinstance(block, dict) else None


def job_facts(raw: Mapping, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """What the entries' conditions look at, with the spec's ``defaults`` (method, benchmark,
    forget_split: given by the spec, which sits above this module) where the job is silent."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    unlearn = raw["unlearn"]
    return {
        "forget": _name(unlearn.get("forget")),
        "method": _name(unlearn.get("method")) or defaults["method"],
        "benchmark": data.get("benchmark", defaults["benchmark"]),
        "forget_split": data.get("forget_split", defaults["forget_split"]),
    }


def resolve(preset: str, facts: Mapping[str, Any]) -> dict[tuple[str, Optional[str]], dict[str, Any]]:
    """``{(section, name): values}`` of the preset for a job with these facts (each value's
    spec section is in its entry)."""
    out: dict[tuple[str, Optional[str]], dict[str, Any]] = {}
    for entry in PRESETS[preset]:
        if all(facts.get(k) == v for k, v in entry.when.items()):
            out.setdefault((entry.section, entry.name), {}).update(entry.values)
    return out


def apply_preset(raw: dict, defaults: Mapping[str, Any]) -> dict:
    """A copy of the raw job with ``unlearn.preset``'s values filled in where the job has none
    (``raysweep.spec.apply_preset`` calls this with the spec's defaults).

    An unknown preset name or a malformed unlearn block is left as it is, for validation to
    report in one line.
    """
    unlearn = raw.get("unlearn")
    if not isinstance(unlearn, dict) or unlearn.get("preset") not in PRESETS:
        return raw
    raw = copy.deepcopy(raw)
    unlearn = raw["unlearn"]
    facts = job_facts(raw, defaults)
    # The default method is written out, so its preset values have a block to go in.
    unlearn.setdefault("method", {"name": facts["method"]})
    resolved = resolve(unlearn["preset"], facts)
    for section in ("unlearn", "forget", "method", "retain"):  # forget before what copies from it
        for (where, name), values in resolved.items():
            if where != section:
                continue
            blocks = unlearn if section == "unlearn" else unlearn.get(section)
            for block in blocks if isinstance(blocks, list) else [blocks]:
                if not isinstance(block, dict) or (name is not None and block.get("name") != name):
                    continue
                for key, value in values.items():
                    if isinstance(value, FromForget):
                        forget = unlearn.get("forget")
                        if not isinstance(forget, dict) or value.key not in forget:
                            continue
                        value = forget[value.key]
                    block.setdefault(key, value)  # an explicit value wins
    return raw
