"""Procedural laws and the law score: the law's own pictures pass, anything else is caught."""

from __future__ import annotations

import numpy as np
import pytest

from projgan.evaluation.law_score import law_score
from projgan.evaluation.laws import BRIGHT, DARK, LAWS, law_params


def _pictures(law: str, n: int, res: int = 32, seed: int = 0) -> np.ndarray:
    return np.stack([LAWS[law].render(p, res) for p in law_params(law, n, seed)])


@pytest.mark.parametrize("law", sorted(LAWS))
@pytest.mark.parametrize("res", [32, 64])
def test_the_laws_own_pictures_score_as_valid_and_matching(law, res):
    s = law_score(_pictures(law, 150, res), law)
    assert s["valid"] >= 0.97, s["invalid_reasons"]
    assert s["param_distance"] < 0.2
    assert 0.8 < s["spread"] <= 1 and not s["collapsed"]


@pytest.mark.parametrize("law", sorted(LAWS))
def test_noise_flat_and_repeated_pictures_fail(law):
    rng = np.random.default_rng(0)
    assert law_score(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), law)["valid"] == 0
    assert law_score(np.full((10, 32, 32, 3), 40, np.uint8), law)["valid"] == 0
    repeated = law_score(np.repeat(_pictures(law, 1), 50, axis=0), law)
    assert repeated["valid"] == 1 and repeated["collapsed"]


def test_broken_shapes_are_invalid_for_a_reason():
    law = LAWS["shapes"]
    p = {"kind": "square", "fg": "yellow", "bg": "navy", "cx": 0.5, "cy": 0.5, "size": 0.4}
    assert law.parse(law.render(p, 32)).valid
    two = law.render(p, 32).copy()
    two[2:7, 2:7] = np.asarray(BRIGHT["cyan"]) * 255  # a second, small object
    assert law.parse(two).reason == "more than one object"
    wrong = law.render({**p, "fg": "yellow"}, 32).astype(np.float32)
    wrong[(wrong - np.asarray(DARK["navy"]) * 255).std(-1) > 30] = (200, 40, 200)  # a magenta square
    assert law.parse(wrong.astype(np.uint8)).reason == "object colour not a law colour"
    squashed = law.render(p, 32).copy()
    squashed[:, 16:] = squashed[:, :1]  # half of the square erased: a rectangle
    assert not law.parse(squashed).valid


def test_a_biased_generator_is_far_from_the_law_and_a_fair_one_is_not():
    params = law_params("shapes", 400, 1)
    circles = [p for p in params if p["kind"] == "circle"]
    left = [p for p in params if p["cx"] < 0.5]
    score = {name: law_score(np.stack([LAWS["shapes"].render(p, 32) for p in ps]), "shapes")
             for name, ps in (("fair", params), ("circles", circles), ("left", left))}
    assert score["fair"]["param_distance"] < 0.1
    assert score["circles"]["per_param"]["kind"]["distance"] > 0.5
    assert score["circles"]["collapsed"]  # one kind only: a frozen parameter
    assert score["left"]["per_param"]["cx"]["distance"] > 3 * score["fair"]["per_param"]["cx"]["distance"]


def test_dots_are_counted():
    law = LAWS["dots"]
    for p in law_params("dots", 30, 2):
        got = law.parse(law.render(p, 64))
        assert got.valid and got.params["count"] == p["count"]


def test_free_colour_discs_need_flat_colours_and_all_of_the_rgb_cube():
    law = LAWS["colourdiscs"]
    p = law_params("colourdiscs", 1, 3)[0]
    img = law.render(p, 32)
    assert law.parse(img).valid
    textured = np.clip(img.astype(np.int16) + np.random.default_rng(0).integers(-40, 41, img.shape), 0, 255)
    assert law.parse(textured.astype(np.uint8)).reason == "ground or disc not of one colour"
    one_scheme = [{**q, **{k: p[k] for k in p if k[:3] in ("fg_", "bg_")}} for q in law_params("colourdiscs", 60, 4)]
    s = law_score(np.stack([law.render(q, 32) for q in one_scheme]), "colourdiscs")
    assert s["valid"] == 1 and s["collapsed"] and s["per_param"]["fg_r"]["spread"] < 0.05


def test_spread_is_not_bought_back_by_overspread_parameters():
    """One colour scheme, sizes and positions only at the law's extremes (more variance than the law has):
    uncapped, the mean spread would be about 1; capped per parameter it reads as the collapse it is."""
    law = LAWS["discs"]
    lo, hi = law.size_range
    params = [{**p, "fg": "white", "bg": "maroon", "size": (lo, hi)[i % 2]} for i, p in enumerate(law_params("discs", 200, 5))]
    s = law_score(np.stack([law.render(p, 32) for p in params]), "discs")
    assert s["per_param"]["size"]["spread"] > 1.4 and s["per_param"]["fg"]["spread"] == 0
    assert s["spread"] <= 0.6 and s["collapsed"]
