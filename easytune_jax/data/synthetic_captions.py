"""Captions of the synthetic motions: 3 per motion from varied templates and synonyms (`make_caption`,
`action_phrase`), tokenised as ``word/POS`` by a small rule-based tagger over the closed vocabulary
(`pos_tag`: NOUN/VERB lemmatised, 'left' kept); :func:`caption_action_labels` / :func:`primary_action_label`
recover the action labels from a caption string alone; `mirror_caption` / `mirror_segments` swap left/right and
clockwise/counterclockwise for the mirrored copies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from easytune_jax.data.synthetic_actions import ACTION_INDEX

_SUBJECTS = ["a person", "a man", "a woman", "someone", "the person", "a figure"]
_COUNT_WORD = {1: "once", 2: "twice", 3: "three times"}
_SIDE = {"left": "left", "right": "right"}


def _loc_phrase(rng, direction):
  return {
    "forward": ["forward", "ahead", "straight ahead", "forward"],
    "backward": ["backward", "backwards"],
    "left": ["to the left", "to the left", "left"],
    "right": ["to the right", "to the right", "right"],
    "circle": ["in a circle", "around in a circle"],
  }[direction][int(rng.integers(2))]


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def action_phrase(seg: dict, rng: np.random.Generator) -> str:
  """A verb phrase (third person, present) describing one segment."""
  a, p = seg["action"], seg["params"]
  if a == "walk":
    verb = _pick(rng, ["walks", "walks", "strolls"])
    speed = {
      "slow": _pick(rng, [" slowly", " at a slow pace"]),
      "normal": "",
      "fast": _pick(rng, [" quickly", " fast", " briskly"]),
    }[p["speed"]]
    return f"{verb} {_loc_phrase(rng, p['direction'])}{speed}"
  if a == "jog":
    return f"{_pick(rng, ['jogs', 'jogs', 'trots'])} {_loc_phrase(rng, p['direction'])}"
  if a == "run":
    return f"{_pick(rng, ['runs', 'runs', 'sprints'])} {_loc_phrase(rng, p['direction'])}"
  if a == "jump":
    c = _COUNT_WORD[p["count"]]
    if p["mode"] == "forward":
      return _pick(rng, [f"jumps forward {c}", f"leaps forward {c}", f"jumps ahead {c}"])
    return _pick(rng, [f"jumps {c} in place", f"jumps up and down {c}", f"jumps in place {c}"])
  if a == "wave":
    if p["hand"] == "both":
      return _pick(rng, ["waves both hands", "waves with both arms", "waves with both hands"])
    s = p["hand"]
    return _pick(rng, [f"waves with the {s} hand", f"waves the {s} hand", f"waves the {s} arm"])
  if a == "kick":
    s = p["side"]
    return _pick(rng, [f"kicks with the {s} leg", f"kicks with the {s} foot", f"does a {s} kick"])
  if a == "squat":
    c = p["count"]
    opts = [f"squats {_COUNT_WORD[c]}", f"does {['a squat', 'two squats', 'three squats'][c - 1]}"]
    if c == 1:
      opts.append("squats down and stands up")
    return _pick(rng, opts)
  if a == "turn":
    s = p["side"]
    if p["angle"] == 90:
      return _pick(rng, [f"turns {s}", f"turns to the {s}", f"turns ninety degrees to the {s}"])
    return _pick(rng, [f"turns around to the {s}", f"makes a half turn to the {s}", f"turns around to the {s}"])
  if a == "spin":
    cw = "counterclockwise" if p["side"] == "left" else "clockwise"
    return _pick(
      rng, ["spins around", f"spins {cw}", f"does a full spin to the {p['side']}", f"spins around to the {p['side']}"]
    )
  if a == "raise_arms":
    return _pick(rng, ["raises both arms", "lifts both arms up", "raises the arms above the head"])
  if a == "punch":
    s, c = p["side"], _COUNT_WORD[p["count"]]
    return _pick(rng, [f"punches with the {s} hand", f"throws a {s} punch {c}", f"punches forward with the {s} arm"])
  if a == "clap":
    return _pick(rng, ["claps", "claps the hands", "claps several times"])
  if a == "step_sideways":
    s = p["side"]
    return _pick(rng, [f"steps sideways to the {s}", f"side steps to the {s}", f"shuffles to the {s}"])
  if a == "bow":
    return _pick(rng, ["bows", "bows forward", "takes a bow", "bows down"])
  raise KeyError(a)


def make_caption(segments: Sequence[dict], rng: np.random.Generator) -> str:
  phrases = [action_phrase(s, rng) for s in segments]
  text = _pick(rng, _SUBJECTS) + " " + phrases[0]
  for i, ph in enumerate(phrases[1:]):
    last = i == len(phrases) - 2
    conn = _pick(rng, [" and then ", ", then ", " then "] if last else [", then ", " then ", " and "])
    text += conn + ph
  return text + "."


# Surface word -> (lemma, default universal POS). NOUN/VERB carry their lemma (HumanML3D
# lemmatises those two classes, except 'left'); other classes keep the surface form.
LEXICON = {
  "a": ("a", "DET"),
  "the": ("the", "DET"),
  "both": ("both", "DET"),
  "person": ("person", "NOUN"),
  "man": ("man", "NOUN"),
  "woman": ("woman", "NOUN"),
  "someone": ("someone", "PRON"),
  "figure": ("figure", "NOUN"),
  "walks": ("walk", "VERB"),
  "strolls": ("stroll", "VERB"),
  "jogs": ("jog", "VERB"),
  "trots": ("trot", "VERB"),
  "runs": ("run", "VERB"),
  "sprints": ("sprint", "VERB"),
  "forward": ("forward", "ADV"),
  "ahead": ("ahead", "ADV"),
  "straight": ("straight", "ADV"),
  "backward": ("backward", "ADV"),
  "backwards": ("backwards", "ADV"),
  "to": ("to", "ADP"),
  "left": ("left", "NOUN"),
  "right": ("right", "NOUN"),
  "in": ("in", "ADP"),
  "circle": ("circle", "NOUN"),
  "around": ("around", "ADV"),
  "slowly": ("slowly", "ADV"),
  "at": ("at", "ADP"),
  "slow": ("slow", "ADJ"),
  "pace": ("pace", "NOUN"),
  "quickly": ("quickly", "ADV"),
  "fast": ("fast", "ADV"),
  "briskly": ("briskly", "ADV"),
  "jumps": ("jump", "VERB"),
  "leaps": ("leap", "VERB"),
  "once": ("once", "ADV"),
  "twice": ("twice", "ADV"),
  "three": ("three", "NUM"),
  "two": ("two", "NUM"),
  "times": ("time", "NOUN"),
  "place": ("place", "NOUN"),
  "up": ("up", "ADP"),
  "and": ("and", "CCONJ"),
  "down": ("down", "ADP"),
  "waves": ("wave", "VERB"),
  "with": ("with", "ADP"),
  "hand": ("hand", "NOUN"),
  "hands": ("hand", "NOUN"),
  "arm": ("arm", "NOUN"),
  "arms": ("arm", "NOUN"),
  "kicks": ("kick", "VERB"),
  "kick": ("kick", "NOUN"),
  "leg": ("leg", "NOUN"),
  "foot": ("foot", "NOUN"),
  "does": ("do", "VERB"),
  "squats": ("squat", "VERB"),
  "squat": ("squat", "NOUN"),
  "stands": ("stand", "VERB"),
  "turns": ("turn", "VERB"),
  "turn": ("turn", "NOUN"),
  "ninety": ("ninety", "NUM"),
  "degrees": ("degree", "NOUN"),
  "makes": ("make", "VERB"),
  "half": ("half", "ADJ"),
  "spins": ("spin", "VERB"),
  "spin": ("spin", "NOUN"),
  "full": ("full", "ADJ"),
  "clockwise": ("clockwise", "ADV"),
  "counterclockwise": ("counterclockwise", "ADV"),
  "raises": ("raise", "VERB"),
  "lifts": ("lift", "VERB"),
  "above": ("above", "ADP"),
  "head": ("head", "NOUN"),
  "punches": ("punch", "VERB"),
  "throws": ("throw", "VERB"),
  "punch": ("punch", "NOUN"),
  "claps": ("clap", "VERB"),
  "several": ("several", "ADJ"),
  "steps": ("step", "VERB"),
  "sideways": ("sideways", "ADV"),
  "side": ("side", "ADV"),
  "shuffles": ("shuffle", "VERB"),
  "bows": ("bow", "VERB"),
  "takes": ("take", "VERB"),
  "bow": ("bow", "NOUN"),
  "then": ("then", "ADV"),
}
_BODY_OR_ACT_NOUNS = {"hand", "hands", "arm", "arms", "leg", "foot", "kick", "punch"}


def pos_tag(caption: str) -> list[str]:
  """Rule-based 'word/POS' tokens for the closed synthetic vocabulary (spaCy-like output).

  Words are lower-cased, '-' removed, non-alphabetic tokens dropped (as HumanML3D does).
  Context rules: 'left'/'right' are ADJ before a body/action noun, NOUN after 'the', else ADV;
  'squats' after a number is the plural noun.
  """
  words = [w for w in caption.lower().replace("-", "").replace(",", " ").replace(".", " ").split() if w.isalpha()]
  out = []
  for i, w in enumerate(words):
    if w not in LEXICON:
      raise KeyError(f"pos_tag: word {w!r} of caption {caption!r} is not in the synthetic LEXICON")
    lemma, pos = LEXICON[w]
    prev = words[i - 1] if i > 0 else ""
    nxt = words[i + 1] if i + 1 < len(words) else ""
    if w in ("left", "right"):
      pos = "ADJ" if nxt in _BODY_OR_ACT_NOUNS else ("NOUN" if prev == "the" else "ADV")
    elif w == "squats" and prev in ("two", "three"):
      pos = "NOUN"
    out.append(f"{lemma}/{pos}")
  return out


# Verb / noun keywords announcing each action in a caption (in order of appearance).
_ACTION_KEYWORDS = {
  "walks": "walk",
  "strolls": "walk",
  "jogs": "jog",
  "trots": "jog",
  "runs": "run",
  "sprints": "run",
  "jumps": "jump",
  "leaps": "jump",
  "waves": "wave",
  "kicks": "kick",
  "kick": "kick",
  "squats": "squat",
  "squat": "squat",
  "turns": "turn",
  "turn": "turn",
  "spins": "spin",
  "spin": "spin",
  "raises": "raise_arms",
  "lifts": "raise_arms",
  "punches": "punch",
  "punch": "punch",
  "claps": "clap",
  "steps": "step_sideways",
  "shuffles": "step_sideways",
  "bows": "bow",
  "bow": "bow",
}


def caption_action_labels(caption: str) -> list[int]:
  """Action labels (indices into ACTIONS) mentioned by a synthetic caption, in order."""
  words = caption.lower().replace(",", " ").replace(".", " ").split()
  labels = []
  for i, w in enumerate(words):
    a = _ACTION_KEYWORDS.get(w)
    if a is None or (w == "squats" and i > 0 and words[i - 1] in ("two", "three")):
      continue
    labels.append(ACTION_INDEX[a])
  return labels


def primary_action_label(caption_or_meta) -> int:
  """Integer class of a caption (first action it mentions) or of a motion's metadata dict."""
  if isinstance(caption_or_meta, dict):
    return int(caption_or_meta["segments"][0]["label"])
  labels = caption_action_labels(caption_or_meta)
  if not labels:
    raise ValueError(f"caption {caption_or_meta!r}: no synthetic action keyword found")
  return labels[0]


_MIRROR_WORDS = {"left": "right", "right": "left", "clockwise": "counterclockwise", "counterclockwise": "clockwise"}


def mirror_caption(caption: str) -> str:
  words = caption.split(" ")
  out = []
  for w in words:
    core = w.rstrip(".,")
    out.append(_MIRROR_WORDS.get(core, core) + w[len(core) :])
  return " ".join(out)


def mirror_segments(segs):
  out = []
  for s in segs:
    s = json.loads(json.dumps(s))
    for k in ("direction", "hand", "side"):
      if s["params"].get(k) in ("left", "right"):
        s["params"][k] = _MIRROR_WORDS[s["params"][k]]
    out.append(s)
  return out
