"""Node selectors: ``spec.nodeSelector`` and ``spec.affinity.nodeAffinity``
(component-helpers' nodeaffinity semantics).

A NodeSelectorTerm ANDs its ``matchExpressions`` (on labels, with ``In``,
``NotIn``, ``Exists``, ``DoesNotExist``, ``Gt``, ``Lt``) and ``matchFields``
(``metadata.name`` only, ``In``/``NotIn`` with one value); the terms of a
NodeSelector are ORed; an empty term matches no node, and a term that does
not parse matches no node either.
"""

from __future__ import annotations

from typing import Any

from controllers.objects import Obj, SelectorError, labels_of, name_of, requirement_matches

Term = dict[str, Any]


def _is_empty(term: Term) -> bool:
    return not term.get("matchExpressions") and not term.get("matchFields")


def term_matches(term: Term, node: Obj) -> bool:
    if _is_empty(term):
        return False
    labels = labels_of(node)
    fields = {"metadata.name": name_of(node)}
    try:
        for expression in term.get("matchExpressions") or []:
            values = list(expression.get("values") or [])
            if not requirement_matches(expression["key"], expression["operator"], values, labels):
                return False
        for expression in term.get("matchFields") or []:
            operator, values = expression.get("operator"), list(expression.get("values") or [])
            if operator not in ("In", "NotIn") or len(values) != 1:
                raise SelectorError(f"matchFields {expression.get('key')}: {operator} {values}")
            if expression["key"] not in fields:
                raise SelectorError(f"matchFields: unknown field {expression['key']}")
            if not requirement_matches(expression["key"], operator, values, fields):
                return False
    except (SelectorError, KeyError):
        return False
    return True


def _node_affinity(pod: Obj) -> dict[str, Any]:
    return ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}


def required_matches(pod: Obj, node: Obj) -> bool:
    """nodeSelector (every label equal) and required node affinity (any term)."""
    labels = labels_of(node)
    for key, value in ((pod.get("spec") or {}).get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = _node_affinity(pod).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return True
    return any(term_matches(term, node) for term in required.get("nodeSelectorTerms") or [])


def preferred_terms(pod: Obj) -> list[tuple[int, Term]]:
    """(weight, preference) of the preferred terms that count (weight 0 or an
    empty preference is skipped)."""
    terms = []
    for term in _node_affinity(pod).get("preferredDuringSchedulingIgnoredDuringExecution") or []:
        weight, preference = int(term.get("weight") or 0), term.get("preference") or {}
        if weight and not _is_empty(preference):
            terms.append((weight, preference))
    return terms


def preferred_score(terms: list[tuple[int, Term]], node: Obj) -> int:
    return sum(weight for weight, term in terms if term_matches(term, node))
