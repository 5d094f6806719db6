"""Tests for the per-step caption policy (template, {token}, shuffling, dropouts), its validation and tag stats."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sdexp.data.caption_policy import CaptionPolicy, split_tags, tag_frequencies, validate_caption_options
from sdexp.data.options import CaptionOptions
from sdexp.errors import ConfigError, UserError

TAGS = "sks dog, sofa, living room, warm light, window, plant, rug, lamp"


def policy(token: str | None = None, **options) -> CaptionPolicy:
    return CaptionPolicy(CaptionOptions(**options), token)


def renders(p: CaptionPolicy, caption: str, n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [p.render(caption, rng) for _ in range(n)]


def test_default_policy_returns_the_caption_unchanged_and_is_static():
    p = policy()
    assert p.is_static
    assert set(renders(p, TAGS, n=20)) == {TAGS}


def test_template_and_token_fill_in_and_token_applies_inside_the_caption_too():
    p = policy("sks", template="a photo of {token} dog, {caption}")
    assert p.render("{token} on a sofa", random.Random(0)) == "a photo of sks dog, sks on a sofa"
    assert p.is_static


def test_caption_using_token_without_data_token_is_an_error_naming_data_token():
    p = policy()
    with pytest.raises(UserError, match=r"data\.token"):
        p.check("{token} dog", where="caption of a.jpg")
    with pytest.raises(UserError, match=r"data\.token"):
        p.render("{token} dog", random.Random(0))


def test_shuffle_keeps_the_first_keep_tokens_tags_in_place_and_moves_the_rest():
    p = policy(shuffle_tags=True, keep_tokens=2)
    assert not p.is_static
    tags = split_tags(TAGS)
    outs = renders(p, TAGS)
    for out in outs:
        got = split_tags(out)
        assert got[:2] == tags[:2]
        assert sorted(got) == sorted(tags)  # nothing lost or duplicated
    assert len({tuple(split_tags(o)[2:]) for o in outs}) > 50  # the rest really is shuffled
    firsts = {split_tags(o)[2] for o in outs}
    assert firsts == set(tags[2:])  # every unkept tag reaches the first free slot


def test_shuffle_output_uses_separator_and_a_space():
    out = policy(shuffle_tags=True, separator="|").render("a|b|c", random.Random(1))
    assert sorted(out.split("| ")) == ["a", "b", "c"]


def test_tag_dropout_never_drops_kept_tags_and_drops_about_p_of_the_others():
    p = policy(tag_dropout=0.3, keep_tokens=1)
    tags = split_tags(TAGS)
    outs = renders(p, TAGS, n=400)
    kept_counts = 0
    for out in outs:
        got = split_tags(out)
        assert got[0] == tags[0]
        assert got[1:] == [t for t in tags[1:] if t in got[1:]]  # order kept: no shuffle asked
        kept_counts += len(got) - 1
    share_dropped = 1 - kept_counts / (len(outs) * (len(tags) - 1))
    assert 0.25 < share_dropped < 0.35


def test_caption_dropout_empties_the_whole_text_template_included():
    p = policy("sks", template="{token}, {caption}", dropout=0.25)
    outs = renders(p, TAGS, n=800)
    empty = outs.count("")
    assert 150 < empty < 250
    assert all(o == f"sks, {TAGS}" for o in outs if o)


def test_render_is_deterministic_given_the_rng_and_varies_with_the_seed():
    p = policy(shuffle_tags=True, keep_tokens=1, tag_dropout=0.2, dropout=0.1)
    assert renders(p, TAGS, seed=3) == renders(p, TAGS, seed=3)
    assert renders(p, TAGS, seed=3) != renders(p, TAGS, seed=4)


def test_a_disabled_feature_draws_nothing_from_the_rng():
    rng = random.Random(0)
    policy(keep_tokens=3).render(TAGS, rng)
    assert rng.random() == random.Random(0).random()


@pytest.mark.parametrize(
    "options, token, key",
    [
        (dict(dropout=1.0), None, "data.captions.dropout: must be in [0, 1)"),
        (dict(dropout=-0.1), None, "data.captions.dropout"),
        (dict(tag_dropout=1.5), None, "data.captions.tag_dropout: must be in [0, 1)"),
        (dict(keep_tokens=-1), None, "data.captions.keep_tokens"),
        (dict(separator=""), None, "data.captions.separator"),
        (dict(template="{captions}"), None, "data.captions.template: unknown field {captions}"),
        (dict(template="{token} dog, {caption}"), None, "data.token:"),
        (dict(template="{token} dog, {caption}"), "  ", "data.token:"),
    ],
)
def test_validation_names_the_bad_key(options, token, key):
    with pytest.raises(ConfigError) as err:
        validate_caption_options(CaptionOptions(**options), token)
    assert str(err.value).startswith(key)
    assert "\n" not in str(err.value)


def test_valid_options_pass_validation():
    validate_caption_options(
        CaptionOptions(
            template="{token}, {caption}", shuffle_tags=True, keep_tokens=2, tag_dropout=0.1, dropout=0.05
        ),
        "sks",
    )


def test_composed_config_rejects_a_bad_caption_key(compose):
    with pytest.raises(ConfigError, match=r"^data\.captions\.dropout: must be in \[0, 1\)"):
        compose("data.dir=/tmp", "data.captions.dropout=1.5")
    cfg = compose("data.dir=/tmp", "data.token=sks", 'data.captions.template="{token}, {caption}"')
    assert CaptionPolicy(cfg.data.captions, cfg.data.token).render("x", random.Random(0)) == "sks, x"


def test_tag_frequencies_count_captions_holding_each_tag():
    counts = tag_frequencies(["sks dog, sofa, sofa", "sks dog,  rug ", "cat"], ",")
    assert counts == {"sks dog": 2, "sofa": 1, "rug": 1, "cat": 1}
    assert tag_frequencies(["a b", "b c"], " ") == {"a": 1, "b": 2, "c": 1}


# ---------------------------------------------------------------- sdexp tags


@pytest.fixture()
def sdexp(monkeypatch, isolated_cli_state):
    """``sdexp.cli.main`` with only the caption commands registered (other modules may be mid-edit)."""
    import sdexp.cli

    monkeypatch.setattr(sdexp.cli, "COMMAND_MODULES", ("sdexp.data.caption_cli",))
    return sdexp.cli.main


def _folder(tmp_path: Path, captions: list[str | None]) -> Path:
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i, caption in enumerate(captions):
        Image.new("RGB", (8, 8)).save(data / f"img{i}.png")
        if caption is not None:
            (data / f"img{i}.txt").write_text(caption)
    return data


def test_tags_command_prints_tags_by_count_with_share(tmp_path, capsys, sdexp):
    data = _folder(tmp_path, ["sks dog, sofa", "sks dog, rug", "sks dog, rug, lamp", None])
    assert sdexp(["tags", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["tag", "count", "share"]
    assert [line.split()[:-1] for line in lines[1:5]] == [
        ["sks", "dog", "3"],
        ["rug", "2"],
        ["lamp", "1"],
        ["sofa", "1"],
    ]
    assert lines[1].split()[-1] == "100.0%" and lines[2].split()[-1] == "66.7%"
    assert "4 distinct tag(s) in 3 caption(s); 1 image(s) without a caption file" in lines[5]

    assert sdexp(["tags", str(data), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and "showing the top 2" in out[-1]


def test_tags_command_reads_the_chosen_extension_and_fails_clearly_without_captions(tmp_path, capsys, sdexp):
    data = _folder(tmp_path, ["a, b", None])
    (data / "img1.caption").write_text("c")
    assert sdexp(["tags", str(data), "--caption-extension", ".caption"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["c", "1", "100.0%"]

    with pytest.raises(SystemExit) as exit_:
        sdexp(["tags", str(data), "--caption-extension", ".md"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no caption files (.md)" in err and len(err.strip().splitlines()) == 1
