"""A schedule rule made of a block match and a schedule (the x86 row rules: softmax, LayerNorm)."""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir.dlight import ScheduleRule


class MatchScheduleRule(ScheduleRule):
    """``match(sch) -> blocks | None`` finds the op's blocks in a PrimFunc; ``schedule(sch,
    blocks)`` schedules them. ``apply`` returns None when the PrimFunc is not the op or a step
    fails on its shapes (the generic schedule is kept)."""

    @staticmethod
    def match(sch):  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def schedule(sch, blocks) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def apply(self, func, target, tunable):
        from tvm import s_tir

        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = self.match(sch)
        if blocks is None:
            return None
        try:
            self.schedule(sch, blocks)
        except Exception:  # noqa: BLE001 - a shape this schedule cannot handle: keep the generic one
            return None
        return sch
