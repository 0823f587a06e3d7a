"""The one filter of the extension list, shared by the API and the catalog page."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from builds.pipeline.vocabulary import ARCHES
from catalog.errors import CatalogError
from catalog.models import Category, Extension


@dataclass(frozen=True)
class ExtensionFilter:
    """``search`` matches name and description; ``category`` and ``arch`` match exactly."""

    search: str = ""
    category: str = ""
    arch: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ExtensionFilter:
        """From query parameters (``?search=&category=&arch=``); unknown values are a 400."""
        search = (params.get("search") or "").strip()[:100]
        category = (params.get("category") or "").strip()
        arch = (params.get("arch") or "").strip()
        if category and category not in Category.values:
            raise CatalogError(
                "filter.invalid-category", f"category must be one of {', '.join(Category.values)}."
            )
        if arch and arch not in ARCHES:
            raise CatalogError("filter.invalid-arch", f"arch must be one of {', '.join(ARCHES)}.")
        return cls(search=search, category=category, arch=arch)

    def apply(self, queryset: QuerySet[Extension]) -> QuerySet[Extension]:
        qs = queryset
        if self.search:
            qs = qs.filter(Q(name__icontains=self.search) | Q(description__icontains=self.search))
        if self.category:
            qs = qs.filter(category=self.category)
        if self.arch:
            # JSON containment is not portable to SQLite; the catalog is small enough for this.
            rows = qs.values_list("pk", "arches")
            qs = qs.filter(pk__in=[pk for pk, arches in rows if self.arch in (arches or [])])
        return qs
