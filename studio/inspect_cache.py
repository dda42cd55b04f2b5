"""install(): Gradio's look-ups of a function's parameters, kept per function.

Gradio reads the parameters of a component class's __init__ each time a component is made
(inspect.getfullargspec, in gradio.component_meta) and each time a component's config is read
(inspect.signature, in gradio.blocks): most of what both cost. The studio makes components on every page a lazy
tab is shown to (its body, the fill's updates) and reads every part's config for every new session, all under
Python's one lock, in turn with the other pages' events. A function's parameters do not change, so the answer is
kept per function, weakly: a function made for one page (a handler of a lazy tab's body) is not kept alive by it.
Everything else those modules take from inspect is inspect's own."""

from __future__ import annotations

import inspect
import types
import weakref
from typing import Any

import gradio.blocks
import gradio.component_meta

PATCHED_MODULES = (gradio.blocks, gradio.component_meta)  # each holds `import inspect` and reads it as inspect.X


class CachedInspect(types.ModuleType):
    """inspect, with signature() and getfullargspec() of a plain function kept per function."""

    def __init__(self) -> None:
        super().__init__("inspect", inspect.__doc__)
        self.signatures: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.argspecs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    def signature(self, obj: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        if args or kwargs or not isinstance(obj, types.FunctionType):
            return inspect.signature(obj, *args, **kwargs)
        found = self.signatures.get(obj)
        if found is None:
            found = self.signatures[obj] = inspect.signature(obj)
        return found  # immutable: a Signature and its Parameters cannot be changed

    def getfullargspec(self, func: Any) -> inspect.FullArgSpec:
        if not isinstance(func, types.FunctionType):
            return inspect.getfullargspec(func)
        found = self.argspecs.get(func)
        if found is None:
            found = self.argspecs[func] = inspect.getfullargspec(func)
        # A copy of what can be changed (args, kwonlyargs, annotations): a caller that changed one would change
        # every later answer.
        return found._replace(
            args=list(found.args), kwonlyargs=list(found.kwonlyargs), annotations=dict(found.annotations)
        )


SHARED = CachedInspect()


def install() -> None:
    """Have Gradio's component and config code use SHARED (once a process: a second call changes nothing)."""
    for module in PATCHED_MODULES:
        assert module.inspect in (inspect, SHARED), f"{module.__name__}.inspect is neither inspect nor SHARED"
        module.inspect = SHARED
