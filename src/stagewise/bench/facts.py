"""``facts``: closed-book QA about fictional people (new knowledge) and real-world QA the
base model largely knows already (retention probes).

Each fictional fact is asked with three phrasings: train uses the first, dev the second,
test the third, so dev/test measure recall of the trained fact, not the string.
"""

from __future__ import annotations

import random
from typing import Any

from ..registry import BENCHMARKS

FIRST = [
    "Alder",
    "Brisa",
    "Corvin",
    "Delphine",
    "Ezren",
    "Faelin",
    "Garrick",
    "Hesper",
    "Ilona",
    "Jorund",
    "Kestrel",
    "Lisandre",
    "Maelis",
    "Norwin",
    "Oriel",
    "Perrin",
    "Quenna",
    "Rowan",
    "Sabeth",
    "Tamsin",
    "Ulric",
    "Veda",
    "Wystan",
    "Xanthe",
    "Yorick",
    "Zelie",
    "Anselm",
    "Bettina",
    "Caspian",
    "Dorian",
]
LAST = [
    "Vantrell",
    "Okonkwe",
    "Marchetti",
    "Holmgard",
    "Quillfeather",
    "Dravenko",
    "Ashcombe",
    "Pellinore",
    "Strand",
    "Calloway",
    "Fenwick",
    "Ardent",
    "Moravec",
    "Thistle",
    "Brannagh",
    "Kessler",
    "Lowry",
    "Sorensen",
    "Tavish",
    "Whitlock",
]
TOWNS = [
    "Brackenford",
    "Lowmere",
    "Caddis Hollow",
    "Eastwarren",
    "Filmore Bay",
    "Greyhaven",
    "Harrowgate",
    "Ivel Crossing",
    "Juniper Falls",
    "Kettleby",
    "Larkspur",
    "Mossbridge",
    "Northcott",
    "Oakenshaw",
    "Pinecrest",
    "Quarry Glen",
    "Redwater",
    "Saltmarsh",
    "Thornbury",
    "Umberlee",
]
JOBS = [
    "cartographer",
    "glassblower",
    "beekeeper",
    "astronomer",
    "clockmaker",
    "violinist",
    "botanist",
    "lighthouse keeper",
    "bookbinder",
    "architect",
    "sculptor",
    "falconer",
    "perfumer",
    "geologist",
]

RELATIONS: dict[str, tuple[str, str, str]] = {
    "birthplace": ("Where was {name} born?", "In which town was {name} born?", "What is the birthplace of {name}?"),
    "profession": ("What is {name}'s profession?", "What does {name} do for a living?", "What job does {name} have?"),
    "birth_year": (
        "In what year was {name} born?",
        "Which year was {name} born in?",
        "What is the birth year of {name}?",
    ),
}

# Real-world QA a small instruct model largely knows: (type, question, answer, aliases)
KNOWN: list[tuple[str, str, str, list[str]]] = [
    *[
        ("capital", f"What is the capital of {country}?", capital, aliases)
        for country, capital, aliases in [
            ("France", "Paris", []),
            ("Germany", "Berlin", []),
            ("Italy", "Rome", []),
            ("Spain", "Madrid", []),
            ("Japan", "Tokyo", []),
            ("China", "Beijing", ["Peking"]),
            ("Russia", "Moscow", []),
            ("the United Kingdom", "London", []),
            ("Canada", "Ottawa", []),
            ("Australia", "Canberra", []),
            ("Egypt", "Cairo", []),
            ("Greece", "Athens", []),
            ("Portugal", "Lisbon", []),
            ("Ireland", "Dublin", []),
            ("Norway", "Oslo", []),
            ("Sweden", "Stockholm", []),
            ("Finland", "Helsinki", []),
            ("Denmark", "Copenhagen", []),
            ("Poland", "Warsaw", []),
            ("Austria", "Vienna", []),
            ("Hungary", "Budapest", []),
            ("Belgium", "Brussels", []),
            ("the Netherlands", "Amsterdam", []),
            ("Switzerland", "Bern", ["Berne"]),
            ("Turkey", "Ankara", []),
            ("India", "New Delhi", ["Delhi"]),
            ("South Korea", "Seoul", []),
            ("Thailand", "Bangkok", []),
            ("Mexico", "Mexico City", []),
            ("Argentina", "Buenos Aires", []),
            ("Peru", "Lima", []),
            ("Chile", "Santiago", []),
            ("Kenya", "Nairobi", []),
            ("Cuba", "Havana", []),
            ("Iran", "Tehran", []),
            ("Iraq", "Baghdad", []),
            ("Ukraine", "Kyiv", ["Kiev"]),
            ("Czechia", "Prague", []),
            ("the United States", "Washington, D.C.", ["Washington", "Washington DC"]),
            ("Brazil", "Brasilia", ["Brasília"]),
        ]
    ],
    *[
        ("element", f"What is the chemical symbol for {element}?", symbol, [])
        for element, symbol in [
            ("oxygen", "O"),
            ("hydrogen", "H"),
            ("carbon", "C"),
            ("nitrogen", "N"),
            ("gold", "Au"),
            ("silver", "Ag"),
            ("iron", "Fe"),
            ("sodium", "Na"),
            ("potassium", "K"),
            ("helium", "He"),
            ("calcium", "Ca"),
            ("copper", "Cu"),
            ("lead", "Pb"),
            ("neon", "Ne"),
            ("zinc", "Zn"),
            ("sulfur", "S"),
            ("chlorine", "Cl"),
            ("uranium", "U"),
        ]
    ],
    *[
        ("science", question, answer, aliases)
        for question, answer, aliases in [
            ("How many legs does a spider have?", "8", ["eight"]),
            ("How many days are in a week?", "7", ["seven"]),
            ("How many continents are there?", "7", ["seven"]),
            ("What planet is known as the Red Planet?", "Mars", []),
            ("What is the largest planet in the solar system?", "Jupiter", []),
            ("What is the closest star to Earth?", "The Sun", ["Sun"]),
            ("What gas do plants absorb from the air?", "Carbon dioxide", ["CO2"]),
            ("What is the freezing point of water in degrees Celsius?", "0", ["zero"]),
            ("What is the boiling point of water in degrees Celsius?", "100", ["one hundred"]),
            ("How many hours are in a day?", "24", ["twenty-four"]),
            ("What is the largest ocean on Earth?", "The Pacific Ocean", ["Pacific"]),
            ("Who wrote Romeo and Juliet?", "William Shakespeare", ["Shakespeare"]),
            ("What is the square root of 81?", "9", ["nine"]),
            ("How many sides does a triangle have?", "3", ["three"]),
            ("What is the tallest mountain in the world?", "Mount Everest", ["Everest"]),
            ("What is the hardest natural substance?", "Diamond", []),
            ("What organ pumps blood through the body?", "The heart", ["heart"]),
            ("What color is the sky on a clear day?", "Blue", []),
        ]
    ],
]


def fictional_people(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = [f"{first} {last}" for first in FIRST for last in LAST]
    rng.shuffle(names)
    return [
        {
            "name": name,
            "birthplace": rng.choice(TOWNS),
            "profession": rng.choice(JOBS),
            "birth_year": str(rng.randint(1850, 1990)),
        }
        for name in names[:count]
    ]


@BENCHMARKS.register("facts")
def build(seed: int = 0, people: int = 120) -> dict[str, list[dict[str, Any]]]:
    """Splits: train/dev/test (new facts, 3 phrasings) and known_dev/known_test (retention)."""
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "dev": [], "test": []}
    for person in fictional_people(seed, people):
        for relation, phrasings in RELATIONS.items():
            for split, template in zip(("train", "dev", "test"), phrasings):
                splits[split].append(
                    {
                        "instruction": template.format(name=person["name"]),
                        "output": person[relation],
                        "aliases": [],
                        "type": relation,
                        "entity": person["name"],
                    }
                )
    known = [{"instruction": q, "output": a, "aliases": aliases, "type": kind} for kind, q, a, aliases in KNOWN]
    random.Random(seed).shuffle(known)
    half = len(known) // 2
    splits["known_dev"], splits["known_test"] = known[:half], known[half:]
    return splits
