"""Forms behind the catalog pages. Validation of catalog rules lives in catalog.services."""

from __future__ import annotations

from django import forms

from catalog.models import Category

ARCH_CHOICES = [("", "Any arch"), ("x86-64", "x86-64"), ("arm64", "arm64")]


class ExtensionSearchForm(forms.Form):
    """The controls of the catalog list; the filtering itself is catalog.filters' job."""

    search = forms.CharField(
        label="Search",
        required=False,
        max_length=100,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "name or description"}),
    )
    category = forms.ChoiceField(
        label="Category", required=False, choices=[("", "Any category"), *Category.choices]
    )
    arch = forms.ChoiceField(label="Arch", required=False, choices=ARCH_CHOICES)
