"""The one filter of the extension list, shared by the catalog page and the API (django-filter)."""

from __future__ import annotations

import django_filters
from django import forms
from django.db.models import Q, QuerySet

from builds.pipeline.vocabulary import ARCHES
from catalog.models import Category, Extension

SEARCH_MAX = 100


class ExtensionFilterSet(django_filters.FilterSet):
    """``search`` matches name and description; ``category`` and ``arch`` match exactly.

    The page renders ``.form``; the API lists the same fields in its OpenAPI schema, and an unknown
    category or arch is a 400 there (an error on the form here).
    """

    search = django_filters.CharFilter(
        label="Search",
        method="filter_search",
        help_text="Words in the name or description.",
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "name or description", "maxlength": SEARCH_MAX}
        ),
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
        fields = ["search", "category", "arch"]

    def filter_search(self, queryset: QuerySet[Extension], name: str, value: str) -> QuerySet[Extension]:
        words = value.strip()[:SEARCH_MAX]  # longer searches are cut, not refused
        if not words:
            return queryset
        return queryset.filter(Q(name__icontains=words) | Q(description__icontains=words))

    def filter_arch(self, queryset: QuerySet[Extension], name: str, value: str) -> QuerySet[Extension]:
        # JSON containment is not portable to SQLite; the catalog is small enough for this.
        rows = queryset.values_list("pk", "arches")
        return queryset.filter(pk__in=[pk for pk, arches in rows if value in (arches or [])])
