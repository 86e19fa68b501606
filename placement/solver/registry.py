"""The solver methods, in one place: ``METHODS``, the CLI's ``--method`` choices and the
baselines reports compare against all derive from :data:`REGISTRY`.

A new method is one module with a function ``solve(problem, options, progress) -> Plan`` and one
line here::

    Method("mine", "what it does, in a line", "placement.solver.mine:solve_mine"),

The function is imported when the method runs (the registry itself stays cheap to import).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from placement._util import Progress
from placement.errors import InputError

if TYPE_CHECKING:
    from placement.plan import Plan
    from placement.solver.problem import ProblemData, SolveOptions

__all__ = ["BASELINES", "METHODS", "REGISTRY", "Method", "SolverMethod", "get_method"]



@runtime_checkable
class SolverMethod(Protocol):
    """What :func:`placement.solver.solve` needs of a method."""

    @property
    def name(self) -> str:
        """The name users pick it by (``--method NAME``)."""
        ...

    @property
    def description(self) -> str:
        """One line for help texts."""
        ...

    @property
    def is_baseline(self) -> bool:
        """Whether reports compare plans against it (EPLB, the engines' default)."""
        ...

    def solve(self, problem: ProblemData, options: SolveOptions,
              progress: Progress | None = None) -> Plan:
        """A plan for ``problem``."""
        ...


@dataclass(frozen=True)
class Method:
    """A :class:`SolverMethod` whose solve function lives at ``target`` (``"module:function"``).

    Attributes:
        name, description, is_baseline: see :class:`SolverMethod`.
        target: ``"package.module:function"``, the function
            ``(problem, options, progress) -> Plan``.
    """

    name: str
    description: str
    target: str
    is_baseline: bool = False

    def solve(self, problem: ProblemData, options: SolveOptions,
              progress: Progress | None = None) -> Plan:
        module, _, func = self.target.partition(":")
        fn = getattr(importlib.import_module(module), func)
        return fn(problem, options, progress)


REGISTRY: tuple[SolverMethod, ...] = (
    Method("optimizer", "robust replica counts and placement, judged by one objective "
           "(predicted MoE layer time by default)", "placement.solver.optimizer:solve_optimizer"),
    Method("eplb", "DeepSeek's EPLB, hierarchical policy (groups packed to nodes)",
           "placement.solver.baselines:solve_eplb", is_baseline=True),
    Method("eplb-global", "DeepSeek's EPLB, global policy",
           "placement.solver.baselines:solve_eplb_global", is_baseline=True),
    Method("sglang-vec", "SGLang's deepseek_vec, per-window peaks",
           "placement.solver.sglang_vec:solve_sglang_vec", is_baseline=True),
    Method("contiguous", "the engines' default: experts in order, contiguous per GPU",
           "placement.solver.baselines:solve_contiguous", is_baseline=True),
)
"""Every solver method, the default first."""

METHODS: tuple[str, ...] = tuple(m.name for m in REGISTRY)
"""The names of every method (``--method`` choices)."""

BASELINES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.is_baseline)
"""The methods plans are compared against."""


def get_method(name: str) -> SolverMethod:
    """The method called ``name``; :class:`InputError` naming the choices otherwise."""
    for m in REGISTRY:
        if m.name == name:
            return m
    raise InputError(f"Unknown method {name!r}; choose one of: {', '.join(METHODS)}.")
