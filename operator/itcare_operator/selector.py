"""Kubernetes label selectors (``matchLabels`` / ``matchExpressions``), parsed and matched.

Semantics as in ``k8s.io/apimachinery/pkg/labels``: all requirements must hold; an
empty selector ``{}`` matches everything; ``NotIn`` and ``DoesNotExist`` match objects
that lack the key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["InvalidSelector", "LabelSelector", "Requirement", "parse_selector"]

_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class InvalidSelector(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # NotIn


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidSelector(f"{where}: label keys must be non-empty strings")
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _PREFIX.match(prefix))) or (
        len(name) > 63 or not _NAME.match(name)
    ):
        raise InvalidSelector(f"{where}: {key!r} is not a valid label key")
    return key


def _check_value(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _VALUE.match(value):
        raise InvalidSelector(f"{where}: {value!r} is not a valid label value")
    return value


def parse_selector(doc: Any, where: str = "selector") -> LabelSelector:
    """A ``metav1.LabelSelector`` document, validated like the API server does."""
    if doc is None:
        return LabelSelector()
    if not isinstance(doc, Mapping):
        raise InvalidSelector(f"{where} must be an object")
    requirements: list[Requirement] = []
    match_labels = doc.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise InvalidSelector(f"{where}.matchLabels must map label keys to values")
    for key, value in match_labels.items():
        requirements.append(
            Requirement(
                _check_key(key, f"{where}.matchLabels"),
                "In",
                frozenset([_check_value(value, f"{where}.matchLabels")]),
            )
        )
    expressions = doc.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise InvalidSelector(f"{where}.matchExpressions must be a list")
    for i, expr in enumerate(expressions):
        at = f"{where}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise InvalidSelector(f"{at} must be an object")
        operator = expr.get("operator")
        if operator not in OPERATORS:
            raise InvalidSelector(f"{at}.operator must be one of {', '.join(OPERATORS)}")
        values = expr.get("values") or []
        if not isinstance(values, list):
            raise InvalidSelector(f"{at}.values must be a list")
        if operator in ("In", "NotIn") and not values:
            raise InvalidSelector(f"{at}.values must be non-empty for {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise InvalidSelector(f"{at}.values must be empty for {operator}")
        requirements.append(
            Requirement(
                _check_key(expr.get("key"), at),
                operator,
                frozenset(_check_value(v, at) for v in values),
            )
        )
    return LabelSelector(tuple(requirements))
