"""scanpy's ``copy=`` convention for the public functions that write into an AnnData."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import anndata as ad

from ._errors import InputError


def with_copy(after: Callable[..., None] | None = None) -> Callable[[Callable], Callable]:
    """Give a function whose ``adata`` argument it writes into a keyword-only ``copy=False``.

    ``copy=True`` runs it on a copy of ``adata`` and returns that copy (the caller's AnnData is
    untouched); ``copy=False`` writes into ``adata`` and returns what the function returns.
    ``after(bound_self_or_None, adata)`` runs on the written AnnData in both cases.
    """

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)
        params = list(signature.parameters.values())
        is_method = params[0].name == "self"
        copy_param = inspect.Parameter("copy", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool")
        kwargs_at = [i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD]
        at = kwargs_at[0] if kwargs_at else len(params)

        @functools.wraps(func)
        def wrapper(*args: Any, copy: bool = False, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            adata = bound.arguments.get("adata")
            if copy:
                if bound.arguments.get("inplace") is False:
                    raise InputError("copy=True writes the results into a copy of the AnnData; it cannot be "
                                     "combined with inplace=False.")
                if not isinstance(adata, ad.AnnData):
                    raise InputError(f"copy=True needs an AnnData, got {type(adata).__name__}.")
                bound.arguments["adata"] = adata = adata.copy()
            result = func(*bound.args, **bound.kwargs)
            if after is not None:
                after(args[0] if is_method else None, adata)
            return adata if copy else result

        wrapper.__signature__ = signature.replace(parameters=params[:at] + [copy_param] + params[at:])
        return wrapper

    return decorate
