"""The one filter of the extension list, shared by the catalog page and the API (django-filter)."""

from __future__ import annotations

import django_filters
from django import forms
from django.db.models import Q, QuerySet

from builds.pipeline.vocabulary import ARCHES
from catalog.models import Category, Extension, ExtensionVersion, VersionStatus

SEARCH_MAX = 100

# What the status filter offers: a version state people look for, and its Q over versions.
STATUS_FILTERS: dict[str, tuple[str, Q]] = {
    "approved": ("Has an approved version", Q(status=VersionStatus.APPROVED, deprecated=False)),
    "proposed": ("Has a proposed version", Q(status=VersionStatus.PROPOSED)),
    "pin-failed": ("Has a version whose pinning failed", Q(status=VersionStatus.PIN_FAILED)),
    "deprecated": ("Has a deprecated version", Q(deprecated=True)),
}


def _matching_categories(word: str) -> list[str]:
    """Categories whose value or label contain ``word`` ("wasm" -> wasm-runtime)."""
    word = word.lower()
    return [value for value, label in Category.choices if word in value or word in str(label).lower()]


class ExtensionFilterSet(django_filters.FilterSet):
    """``search`` matches every word in the name, description, category or keywords; ``status``,
    ``category`` and ``arch`` match exactly.

    The page renders ``.form``; the API lists the same fields in its OpenAPI schema, and an unknown
    status, category or arch is a 400 there (an error on the form here).
    """

    search = django_filters.CharFilter(
        label="Search",
        method="filter_search",
        help_text="Words in the name, description, category or keywords (wasm, k8s...).",
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "name, category or keyword", "maxlength": SEARCH_MAX}
        ),
    )
    status = django_filters.ChoiceFilter(
        label="Status",
        choices=[(value, label) for value, (label, _) in STATUS_FILTERS.items()],
        empty_label="Any status",
        method="filter_status",
        help_text="Extensions with at least one version in this state.",
    )
    category = django_filters.ChoiceFilter(
        label="Category", choices=Category.choices, empty_label="Any category"
    )
    arch = django_filters.ChoiceFilter(
        label="Arch",
        choices=[(arch, arch) for arch in ARCHES],
        empty_label="Any arch",
        method="filter_arch",
    )

    class Meta:
        model = Extension
        fields = ["search", "status", "category", "arch"]

    def filter_search(self, queryset: QuerySet[Extension], name: str, value: str) -> QuerySet[Extension]:
        words = value.strip()[:SEARCH_MAX].lower().split()  # longer searches are cut, not refused
        if not words:
            return queryset
        # Keywords are a JSON list: matched here rather than in SQL (the catalog is small, and a
        # text match on the JSON would also match its quotes and commas).
        rows = list(queryset.values_list("pk", "keywords"))
        for word in words:
            keyword_pks = [pk for pk, keywords in rows if any(word in k for k in keywords or [])]
            queryset = queryset.filter(
                Q(name__icontains=word)
                | Q(description__icontains=word)
                | Q(category__in=_matching_categories(word))
                | Q(pk__in=keyword_pks)
            )
        return queryset

    def filter_status(self, queryset: QuerySet[Extension], name: str, value: str) -> QuerySet[Extension]:
        versions = ExtensionVersion.objects.filter(STATUS_FILTERS[value][1])
        return queryset.filter(pk__in=versions.values("extension_id"))

    def filter_arch(self, queryset: QuerySet[Extension], name: str, value: str) -> QuerySet[Extension]:
        # JSON containment is not portable to SQLite; the catalog is small enough for this.
        rows = queryset.values_list("pk", "arches")
        return queryset.filter(pk__in=[pk for pk, arches in rows if value in (arches or [])])
