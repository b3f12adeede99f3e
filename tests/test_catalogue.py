"""The plan catalogue: shipped, validated at load, replaceable by PLANSHIFT_CATALOGUE."""

from __future__ import annotations

import json

import pytest

from planshift.catalogue import Catalogue, CatalogueError
from planshift.settings import Settings

BUSINESS_PLANS = {"M365_BUSINESS_BASIC", "M365_BUSINESS_STANDARD", "M365_BUSINESS_PREMIUM",
                  "M365_APPS_FOR_BUSINESS", "EXCHANGE_ONLINE_PLAN_1", "EXCHANGE_ONLINE_PLAN_2", "M365_E3", "M365_E5"}


def test_shipped_catalogue_has_the_business_plans_and_their_services():
    catalogue = Catalogue.load()
    assert BUSINESS_PLANS <= set(catalogue.skus)
    premium = catalogue.get("M365_BUSINESS_PREMIUM")
    assert {"EXCHANGE", "SHAREPOINT", "ONEDRIVE", "TEAMS", "INTUNE"} <= set(premium.services)
    assert premium.services["EXCHANGE"].data and not premium.services["TEAMS"].data


@pytest.mark.parametrize("source,target,missing,lower", [
    ("M365_BUSINESS_BASIC", "M365_BUSINESS_STANDARD", (), ()),
    ("M365_BUSINESS_STANDARD", "M365_BUSINESS_PREMIUM", (), ()),
    ("M365_BUSINESS_BASIC", "M365_APPS_FOR_BUSINESS", ("EXCHANGE", "SHAREPOINT", "TEAMS"), ()),
    ("EXCHANGE_ONLINE_PLAN_2", "M365_BUSINESS_PREMIUM", (), ("EXCHANGE",)),  # a lower Exchange tier
    ("EXCHANGE_ONLINE_PLAN_1", "EXCHANGE_ONLINE_PLAN_2", (), ()),
    ("M365_E3", "M365_E5", (), ()),
    # r2: "a plan with fewer services" is changed by hand, data-related or not
    ("M365_BUSINESS_PREMIUM", "M365_BUSINESS_BASIC",
     ("BOOKINGS", "DEFENDER_BUSINESS", "ENTRA_ID", "INTUNE", "OFFICE_DESKTOP", "PURVIEW_INFORMATION_PROTECTION"), ()),
])
def test_fewer_services(source, target, missing, lower):
    assert Catalogue.load().fewer_services(source, target) == (missing, lower)


def test_replacement_catalogue_from_settings(tmp_path):
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"skus": {"A": {"name": "Plan A", "services": {"MAIL": {"tier": 1, "data": True}}}}}))
    catalogue = Catalogue.for_settings(Settings.from_env({"PLANSHIFT_CATALOGUE": str(path)}))
    assert list(catalogue.skus) == ["A"]


@pytest.mark.parametrize("content,fragment", [
    ("{nope", "is not JSON"),
    (json.dumps({"skus": {"A": {"services": {}}}}), "$.skus.A.name: required field is missing"),
    (json.dumps({"skus": {"A": {"name": "A", "services": {"MAIL": {"tier": "high", "data": True}}}}}),
     "$.skus.A.services.MAIL.tier"),
])
def test_bad_catalogue_is_refused_at_load(tmp_path, content, fragment):
    path = tmp_path / "catalogue.json"
    path.write_text(content)
    with pytest.raises(CatalogueError) as caught:
        Catalogue.load(path)
    assert fragment in str(caught.value)


def test_missing_catalogue_file(tmp_path):
    with pytest.raises(CatalogueError, match="cannot read the plan catalogue"):
        Catalogue.load(tmp_path / "absent.json")
