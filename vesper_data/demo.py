"""``--dataset demo``: a generated corpus of simple English and French sentences.

Written for this project (templates x small vocabularies, with French agreement), so it ships
without third-party text, is the same for a given seed, and is easy enough that a nano model's
loss falls quickly. One sentence per line; paragraphs of one language separated by blank lines.
"""

from __future__ import annotations

import random

DEMO_NAME = "demo"

# Objects as (English, French), grouped by what can be done to them.
FOOD = [("an apple", "une pomme"), ("the bread", "le pain"), ("some soup", "de la soupe"),
        ("a cake", "un gâteau"), ("the cheese", "le fromage"), ("some rice", "du riz")]
READING = [("a book", "un livre"), ("the newspaper", "le journal"), ("a long letter", "une longue lettre"),
           ("the map", "la carte"), ("an old story", "une vieille histoire")]
WRITING = [("a letter", "une lettre"), ("a poem", "un poème"), ("the list", "la liste"),
           ("a short story", "une petite histoire"), ("a song", "une chanson")]
THINGS = [("the door", "la porte"), ("a red box", "une boîte rouge"), ("the window", "la fenêtre"),
          ("a blue chair", "une chaise bleue"), ("the old table", "la vieille table"), ("a bag", "un sac"),
          ("the car", "la voiture"), ("a bicycle", "un vélo")]
OPENABLE = [("the door", "la porte"), ("the window", "la fenêtre"), ("a red box", "une boîte rouge"),
            ("a bag", "un sac")]

# Verbs: English (base, 3rd singular, past), French (infinitive, il/elle, ils/elles, participle), objects.
VERBS = [
    (("read", "reads", "read"), ("lire", "lit", "lisent", "lu"), READING),
    (("write", "writes", "wrote"), ("écrire", "écrit", "écrivent", "écrit"), WRITING),
    (("eat", "eats", "ate"), ("manger", "mange", "mangent", "mangé"), FOOD),
    (("cook", "cooks", "cooked"), ("préparer", "prépare", "préparent", "préparé"), FOOD),
    (("buy", "buys", "bought"), ("acheter", "achète", "achètent", "acheté"), FOOD + THINGS + READING),
    (("carry", "carries", "carried"), ("porter", "porte", "portent", "porté"), THINGS + FOOD),
    (("find", "finds", "found"), ("trouver", "trouve", "trouvent", "trouvé"), THINGS + READING),
    (("paint", "paints", "painted"), ("peindre", "peint", "peignent", "peint"), THINGS),
    (("wash", "washes", "washed"), ("laver", "lave", "lavent", "lavé"), THINGS),
    (("open", "opens", "opened"), ("ouvrir", "ouvre", "ouvrent", "ouvert"), OPENABLE),
]

# Subjects: English, French, plural?, French feminine?
PEOPLE = [
    ("my sister", "ma sœur", False, True), ("my brother", "mon frère", False, False),
    ("the teacher", "le professeur", False, False), ("the baker", "la boulangère", False, True),
    ("our neighbour", "notre voisin", False, False), ("the little girl", "la petite fille", False, True),
    ("the farmer", "le fermier", False, False), ("the doctor", "le médecin", False, False),
    ("the children", "les enfants", True, False), ("my parents", "mes parents", True, False),
    ("the students", "les étudiantes", True, True), ("our friends", "nos amis", True, False),
]
ANIMALS = [("the cat", "le chat"), ("the dog", "le chien"), ("the horse", "le cheval"),
           ("the little bird", "le petit oiseau")]
ANIMAL_VERBS = [("sleeps", "dort"), ("plays", "joue"), ("waits", "attend"), ("sings", "chante")]

PLACES = [("in the garden", "dans le jardin"), ("at the station", "à la gare"),
          ("near the river", "près de la rivière"), ("in the kitchen", "dans la cuisine"),
          ("at school", "à l'école"), ("at the market", "au marché"), ("at the library", "à la bibliothèque"),
          ("in the park", "dans le parc"), ("by the sea", "au bord de la mer"), ("in the village", "dans le village")]
TIMES_NOW = [("every morning", "chaque matin"), ("on Sundays", "le dimanche"), ("in the evening", "le soir"),
             ("after lunch", "après le déjeuner"), ("every day", "tous les jours"), ("in winter", "en hiver")]
TIMES_PAST = [("yesterday", "hier"), ("last week", "la semaine dernière"), ("this morning", "ce matin"),
              ("on Monday", "lundi")]
TIMES_NEXT = [("tomorrow", "demain"), ("next week", "la semaine prochaine"), ("tonight", "ce soir")]

# Adjectives: English, French (m. sing., f. sing., m. plur., f. plur.)
ADJECTIVES = [("happy", ("heureux", "heureuse", "heureux", "heureuses")),
              ("tired", ("fatigué", "fatiguée", "fatigués", "fatiguées")),
              ("busy", ("occupé", "occupée", "occupés", "occupées")),
              ("calm", ("calme", "calme", "calmes", "calmes")),
              ("proud", ("fier", "fière", "fiers", "fières")),
              ("hungry", ("affamé", "affamée", "affamés", "affamées"))]


def _capitalize(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def english_sentence(rng: random.Random) -> str:
    en, _, plural, _ = rng.choice(PEOPLE)
    (base, third, past), _, objects = rng.choice(VERBS)
    obj, place = rng.choice(objects)[0], rng.choice(PLACES)[0]
    verb = base if plural else third
    kind = rng.randrange(7)
    if kind == 0:
        text = f"{en} {verb} {obj} {place} {rng.choice(TIMES_NOW)[0]}."
    elif kind == 1:
        text = f"{rng.choice(TIMES_PAST)[0]}, {en} {past} {obj} {place}."
    elif kind == 2:
        text = f"{en} will {base} {obj} {rng.choice(TIMES_NEXT)[0]}."
    elif kind == 3:
        text = f"{en} {'are' if plural else 'is'} {rng.choice(ADJECTIVES)[0]} {rng.choice(TIMES_NOW)[0]}."
    elif kind == 4:
        text = f"{en} {'like' if plural else 'likes'} to {base} {obj} {place}."
    elif kind == 5:
        text = f"{'do' if plural else 'does'} {en} {base} {obj} {place}? Yes, {rng.choice(TIMES_NOW)[0]}."
    else:
        animal, (animal_verb, _) = rng.choice(ANIMALS)[0], rng.choice(ANIMAL_VERBS)
        text = f"{animal} {animal_verb} {place}."
    return _capitalize(text)


def french_sentence(rng: random.Random) -> str:
    _, fr, plural, feminine = rng.choice(PEOPLE)
    _, (infinitive, singular, plural_form, participle), objects = rng.choice(VERBS)
    obj, place = rng.choice(objects)[1], rng.choice(PLACES)[1]
    verb = plural_form if plural else singular
    kind = rng.randrange(7)
    if kind == 0:
        text = f"{fr} {verb} {obj} {place} {rng.choice(TIMES_NOW)[1]}."
    elif kind == 1:
        text = f"{rng.choice(TIMES_PAST)[1]}, {fr} {'ont' if plural else 'a'} {participle} {obj} {place}."
    elif kind == 2:
        text = f"{rng.choice(TIMES_NEXT)[1]}, {fr} {'vont' if plural else 'va'} {infinitive} {obj}."
    elif kind == 3:
        adjective = rng.choice(ADJECTIVES)[1][2 * plural + feminine]
        text = f"{fr} {'sont' if plural else 'est'} {adjective} {rng.choice(TIMES_NOW)[1]}."
    elif kind == 4:
        text = f"{fr} {'aiment' if plural else 'aime'} {infinitive} {obj} {place}."
    elif kind == 5:
        text = f"est-ce que {fr} {verb} {obj} {place} ? Oui, {rng.choice(TIMES_NOW)[1]}."
    else:
        animal, (_, animal_verb) = rng.choice(ANIMALS)[1], rng.choice(ANIMAL_VERBS)
        text = f"{animal} {animal_verb} {place}."
    return _capitalize(text)


def demo_corpus(num_sentences: int = 20000, seed: int = 0) -> str:
    """``num_sentences`` sentences, one per line, in paragraphs of 3-7 sentences of one language."""
    rng = random.Random(seed)
    paragraphs, written = [], 0
    while written < num_sentences:
        sentence = english_sentence if rng.random() < 0.5 else french_sentence
        size = min(rng.randint(3, 7), num_sentences - written)
        paragraphs.append("\n".join(sentence(rng) for _ in range(size)))
        written += size
    return "\n\n".join(paragraphs) + "\n"
