"""A synthetic world: a fictional encyclopedia and questions only it can answer.

Every name is made of random syllables, so no pretrained model knows any fact here: a model that
answers correctly must have found the answer by searching the corpus. The world is a pure function
of its seed and sizes.

Entities: countries (capital, language, currency, founding year), cities (country, river,
founding year), people (birth city, birth year, occupation) and organisations (founder,
headquarters city, founding year, industry). Each entity gets one encyclopedia passage. Facts
that link two entities are stated in the passage of the entity they describe, so a two-hop
question ("In which country was X born?") needs two searches: X's passage gives the city, the
city's passage gives the country.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from searchr1.retrieval.corpus import Passage

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "l", "th", "m", "x"]

OCCUPATIONS = ["painter", "astronomer", "poet", "engineer", "composer", "botanist", "cartographer", "physician",
               "architect", "historian", "sculptor", "mathematician"]
INDUSTRIES = ["shipbuilding", "textiles", "publishing", "glassmaking", "banking", "mining", "clockmaking",
              "brewing", "printing", "rail transport"]


@dataclass
class Entity:
    kind: str
    name: str
    facts: dict = field(default_factory=dict)


@dataclass
class Question:
    id: str
    question: str
    golden_answers: list[str]
    hops: int
    kind: str
    support: list[str]  # titles of the passages that hold the facts, in hop order

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class World:
    seed: int
    entities: dict[str, Entity]

    def passages(self) -> list[Passage]:
        return [Passage(f"syn-{i}", e.name, describe(e, self.entities)) for i, e in enumerate(self.entities.values())]

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind]


class _Names:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        return "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                       for _ in range(syllables)).capitalize()

    def unique(self, make) -> str:
        for _ in range(1000):
            name = make()
            if name.lower() not in self.used:
                self.used.add(name.lower())
                return name
        raise RuntimeError("name space exhausted; use fewer entities")


def build_world(seed: int = 0, countries: int = 8, cities_per_country: int = 4, people: int = 120,
                organisations: int = 40) -> World:
    rng = random.Random(seed)
    names = _Names(rng)
    entities: dict[str, Entity] = {}

    def add(kind: str, name: str, **facts) -> Entity:
        e = Entity(kind, name, facts)
        entities[name] = e
        return e

    languages = [names.unique(lambda: names.word(2) + "ic") for _ in range(max(2, countries // 2))]
    currencies = [names.unique(lambda: names.word(1).lower()) for _ in range(countries)]
    city_list: list[Entity] = []
    for c in range(countries):
        country = add("country", names.unique(lambda: names.word(rng.choice([2, 3])) + "ia"),
                      language=rng.choice(languages), currency=currencies[c], founded=rng.randint(900, 1850))
        rivers = [names.unique(lambda: names.word(2)) for _ in range(2)]
        members = []
        for _ in range(cities_per_country):
            city = add("city", names.unique(lambda: names.word(rng.choice([2, 3]))), country=country.name,
                       river=rng.choice(rivers), founded=rng.randint(600, 1900))
            members.append(city.name)
            city_list.append(city)
        country.facts["capital"] = members[0]
    person_list: list[Entity] = []
    for _ in range(people):
        name = names.unique(lambda: f"{names.word(2)} {names.word(rng.choice([2, 3]))}")
        person_list.append(add("person", name, born_in=rng.choice(city_list).name, born=rng.randint(1700, 1990),
                               occupation=rng.choice(OCCUPATIONS)))
    for _ in range(organisations):
        founder = rng.choice(person_list)
        add("organisation", names.unique(lambda: f"{names.word(2)} {rng.choice(['Company', 'Guild', 'Works', 'Society'])}"),
            founder=founder.name, headquarters=rng.choice(city_list).name,
            founded=min(founder.facts["born"] + rng.randint(20, 60), 2024), industry=rng.choice(INDUSTRIES))
    return World(seed, entities)


def describe(e: Entity, entities: dict[str, Entity]) -> str:
    f = e.facts
    if e.kind == "country":
        return (f"{e.name} is a country whose capital is {f['capital']}. It was founded in {f['founded']}. "
                f"The official language of {e.name} is {f['language']} and its currency is the {f['currency']}.")
    if e.kind == "city":
        capital = " and its capital" if entities[f["country"]].facts.get("capital") == e.name else ""
        return (f"{e.name} is a city in {f['country']}{capital}. It lies on the river {f['river']} "
                f"and was founded in {f['founded']}.")
    if e.kind == "person":
        return (f"{e.name} (born {f['born']}) is a {f['occupation']}. {e.name.split()[0]} was born in "
                f"the city of {f['born_in']}.")
    if e.kind == "organisation":
        return (f"{e.name} is a {f['industry']} organisation founded in {f['founded']} by {f['founder']}. "
                f"Its headquarters are in {f['headquarters']}.")
    raise ValueError(f"unknown entity kind {e.kind!r}")


def make_questions(world: World) -> list[Question]:
    """All questions the world supports, single-hop then two-hop, in a fixed order."""
    ent = world.entities
    qs: list[Question] = []

    def q(kind: str, text: str, answer, hops: int, support: list[str]) -> None:
        qs.append(Question(f"{kind}-{len(qs)}", text, [str(answer)], hops, kind, support))

    for c in world.of_kind("country"):
        q("capital", f"What is the capital of {c.name}?", c.facts["capital"], 1, [c.name])
        q("currency", f"What is the currency of {c.name}?", c.facts["currency"], 1, [c.name])
    for c in world.of_kind("city"):
        q("city_country", f"In which country is the city of {c.name}?", c.facts["country"], 1, [c.name])
        q("city_river", f"On which river does {c.name} lie?", c.facts["river"], 1, [c.name])
    for p in world.of_kind("person"):
        city = ent[p.facts["born_in"]]
        q("birthplace", f"In which city was {p.name} born?", city.name, 1, [p.name])
        q("birth_year", f"In what year was {p.name} born?", p.facts["born"], 1, [p.name])
        q("birth_country", f"In which country was {p.name} born?", city.facts["country"], 2, [p.name, city.name])
        q("birth_river", f"On which river lies the city where {p.name} was born?", city.facts["river"], 2,
          [p.name, city.name])
    for o in world.of_kind("organisation"):
        founder = ent[o.facts["founder"]]
        hq = ent[o.facts["headquarters"]]
        q("founder", f"Who founded {o.name}?", founder.name, 1, [o.name])
        q("hq", f"In which city is {o.name} headquartered?", hq.name, 1, [o.name])
        q("founder_birthplace", f"In which city was the founder of {o.name} born?", founder.facts["born_in"], 2,
          [o.name, founder.name])
        q("hq_country", f"In which country are the headquarters of {o.name}?", hq.facts["country"], 2,
          [o.name, hq.name])
    return qs


def split_questions(questions: list[Question], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[Question], list[Question]]:
    """Shuffle with `seed` and split into (train, test); each split keeps both hop counts."""
    rng = random.Random(seed)
    train: list[Question] = []
    test: list[Question] = []
    for hops in sorted({q.hops for q in questions}):
        group = [q for q in questions if q.hops == hops]
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        test += group[:n_test]
        train += group[n_test:]
    return train, test
