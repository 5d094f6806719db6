"""Tests for `sdexp caption`: a tiny random-weight BLIP captions a toy folder offline.

Random weights caption gibberish, so these check the plumbing: which sidecars appear or stay
untouched, the prefix, the review page, unreadable images, and the errors for bad input.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sdexp.data.autocaption import load_captioner

pytestmark = pytest.mark.usefixtures("one_thread")

PREFIX = "sks toy, "


@pytest.fixture()
def sdexp(monkeypatch, isolated_cli_state, capsys):
    """Run ``sdexp ARGS`` in-process with only the caption commands registered; return (code, out, err)."""
    import sdexp.cli

    monkeypatch.setattr(sdexp.cli, "COMMAND_MODULES", ("sdexp.data.caption_cli",))

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = sdexp.cli.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture()
def data(tmp_path, monkeypatch) -> Path:
    """Six toy images (toy-01/03/05 captioned by hand) plus a corrupt one; cwd is a separate work folder."""
    from toy_images import write_demo_images

    folder = write_demo_images(tmp_path / "images", n=6)
    (folder / "broken.png").write_bytes(b"not a png at all")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return folder


def sidecars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.txt"))}


def test_caption_adds_sidecars_with_prefix_keeps_existing_ones_and_reviews_every_image(
    data, tiny_captioner_dir, sdexp
):
    before = sidecars(data)
    assert sorted(before) == ["toy-01.txt", "toy-03.txt", "toy-05.txt"]

    code, out, err = sdexp(
        "caption", data, "--model", tiny_captioner_dir, "--prefix", PREFIX, "--batch-size", "2"
    )

    assert code == 0, err
    after = sidecars(data)
    assert sorted(after) == [
        "toy-00.txt",
        "toy-01.txt",
        "toy-02.txt",
        "toy-03.txt",
        "toy-04.txt",
        "toy-05.txt",
    ]
    for name in before:
        assert after[name] == before[name]  # byte-identical: never touched
    for name in ("toy-00.txt", "toy-02.txt", "toy-04.txt"):
        text = after[name].decode()
        assert text.startswith(PREFIX) and text.endswith("\n") and text.count("\n") == 1
        assert len(text.strip()) > len(PREFIX.strip())
    assert not (data / "broken.txt").exists()
    assert "wrote 3 caption file(s)" in out
    assert "skipped 3 image(s) that already have a caption file" in out
    assert "broken.png" in err and "unreadable" in err

    review = Path("caption-review/index.html")  # default: ./caption-review in the working directory
    page = review.read_text()
    for image in sorted(data.iterdir()):
        if image.suffix == ".png":
            assert f">{image.name}</a>" in page
    assert html.escape("a photo of sks toy on a plain background") in page
    assert after["toy-00.txt"].decode().strip() in html.unescape(page)
    assert len(list(Path("caption-review/thumbs").glob("*.jpg"))) == 6  # all but the broken image
    assert not any(p.name.startswith(".") for p in data.iterdir())  # no temp files left in the data folder


def test_overwrite_replaces_existing_sidecars_and_custom_extension_is_used(data, tiny_captioner_dir, sdexp):
    review = data.parent / "review"
    code, out, err = sdexp(
        "caption", data, "--model", tiny_captioner_dir, "--overwrite", "--review", review, "--prefix", "zzz"
    )
    assert code == 0, err
    texts = {name: b.decode() for name, b in sidecars(data).items()}
    assert len(texts) == 6 and all(t.startswith("zzz ") for t in texts.values())
    assert "wrote 6 caption file(s)" in out
    assert (review / "index.html").is_file() and not Path("caption-review").exists()

    code, out, err = sdexp("caption", data, "--model", tiny_captioner_dir, "--caption-extension", ".caption")
    assert code == 0, err
    assert len(list(data.glob("*.caption"))) == 6
    assert all(b.decode().startswith("zzz ") for b in sidecars(data).values())  # .txt files untouched


def test_an_already_captioned_folder_needs_no_model_load(data, tiny_captioner_dir, tiny_dino_dir, sdexp):
    assert sdexp("caption", data, "--model", tiny_captioner_dir)[0] == 0
    before = sidecars(data)
    # a DINOv2 folder cannot caption; it is never loaded because nothing is left to caption
    code, out, err = sdexp("caption", data, "--model", tiny_dino_dir)
    assert code == 0, err
    assert "wrote 0 caption file(s)" in out and "skipped 6 image(s)" in out
    assert sidecars(data) == before


def test_review_page_escapes_file_names_and_captions(tmp_path, tiny_captioner_dir, sdexp, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(folder / 'a<b>&"c.png')
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "x.png")
    (folder / "x.txt").write_text("<script>alert(1)</script> & friends")
    monkeypatch.chdir(tmp_path)
    code, _, err = sdexp("caption", folder, "--model", tiny_captioner_dir)
    assert code == 0, err
    page = Path("caption-review/index.html").read_text()
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends" in page
    assert "a&lt;b&gt;&amp;&quot;c.png" in page
    assert (folder / 'a<b>&"c.txt').read_text().strip()


def test_captioner_api_is_deterministic(tiny_captioner_dir):
    captioner = load_captioner(str(tiny_captioner_dir), device="cpu")
    images = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (20, 50), (30, 30, 200))]
    first = captioner.caption(images)
    assert len(first) == 2 and all(isinstance(c, str) and c and "\n" not in c for c in first)
    assert captioner.caption(images) == first


def test_a_decoder_only_family_git_captions_too(tmp_path, sdexp, monkeypatch):
    from tiny_captioner import build_tiny_git

    model = build_tiny_git(tmp_path / "tiny-git")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40 + i, 30), (60 * i, 100, 10)).save(folder / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    code, out, err = sdexp("caption", folder, "--model", model, "--prefix", "sks, ")
    assert code == 0, err
    assert all(p.read_text().startswith("sks, ") for p in folder.glob("*.txt")) and "wrote 3" in out
    captioner = load_captioner(str(model), device="cpu", prompt="a photo of")
    caption = captioner.caption([Image.new("RGB", (40, 30))])[0]
    assert caption and not caption.startswith("a photo of")  # the echoed prompt is cut off


# ---------------------------------------------------------------- bad input: one line, exit 2


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("sdexp caption: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0]


def test_missing_model_says_what_to_pass(data, sdexp):
    code, _, err = sdexp("caption", data)
    one_line_error(code, err, "--model", "BLIP", "GIT", "save_pretrained", "local")
    assert sidecars(data).keys() == {"toy-01.txt", "toy-03.txt", "toy-05.txt"}


def test_model_folder_that_does_not_exist(data, sdexp, tmp_path):
    code, _, err = sdexp("caption", data, "--model", tmp_path / "no-such-model")
    one_line_error(code, err, "--model", "no-such-model", "does not exist")
    code, _, err = sdexp("caption", data, "--model", "someone/not-cached-model")
    one_line_error(code, err, "not-cached-model", "cache", "nothing is downloaded")


def test_a_model_that_is_not_image_to_text(data, tiny_dino_dir, sdexp):
    code, _, err = sdexp("caption", data, "--model", tiny_dino_dir)
    one_line_error(code, err, "dinov2", "not an image-to-text")
    assert sidecars(data).keys() == {"toy-01.txt", "toy-03.txt", "toy-05.txt"}


def test_remote_code_needs_the_explicit_flag(data, tmp_path, sdexp):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "my_captioner", "auto_map": {"AutoConfig": "configuration_x.XConfig",'
        ' "AutoModelForCausalLM": "modeling_x.XModel"}}'
    )
    code, _, err = sdexp("caption", data, "--model", folder)
    one_line_error(code, err, "--trust-remote-code")


def _copy_with_weights(src: Path, dst: Path, keep) -> int:
    """Copy a model folder keeping only the weight tensors for which ``keep(name)``; return how many were dropped."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    kept = {k: v for k, v in weights.items() if keep(k)}
    save_file(kept, dst / "model.safetensors", metadata={"format": "pt"})
    return len(weights) - len(kept)


def test_weights_that_mostly_do_not_fit_are_refused(data, tiny_captioner_dir, tmp_path, sdexp):
    folder = tmp_path / "partial"
    dropped = _copy_with_weights(tiny_captioner_dir, folder, lambda k: "vision_model" not in k)
    code, _, err = sdexp("caption", data, "--model", folder)
    one_line_error(code, err, "weights do not fit", f"{dropped} of")


def test_a_few_missing_weights_only_warn(tmp_path, tiny_captioner_dir):
    folder = tmp_path / "almost"
    name = "vision_model.post_layernorm.bias"
    assert _copy_with_weights(tiny_captioner_dir, folder, lambda k: k != name) == 1
    warnings = []
    load_captioner(str(folder), device="cpu", warn=warnings.append)
    assert len(warnings) == 1 and name in warnings[0]


def test_pickle_only_weights_need_the_explicit_flag(data, tiny_captioner_dir, tmp_path, sdexp):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_captioner_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    code, _, err = sdexp("caption", data, "--model", folder)
    one_line_error(code, err, "pickle", "--allow-pickle")


def test_review_folder_inside_the_data_folder_is_refused(data, tiny_captioner_dir, sdexp, monkeypatch):
    code, _, err = sdexp("caption", data, "--model", tiny_captioner_dir, "--review", data / "review")
    one_line_error(code, err, "--review", "inside the data folder")
    monkeypatch.chdir(data)  # the default ./caption-review would land inside DATA too
    code, _, err = sdexp("caption", ".", "--model", tiny_captioner_dir)
    one_line_error(code, err, "--review")
    assert not (data / "caption-review").exists() and not (data / "review").exists()


def test_empty_folder_and_bad_numbers(tmp_path, tiny_captioner_dir, sdexp):
    (tmp_path / "empty").mkdir()
    code, _, err = sdexp(
        "caption", tmp_path / "empty", "--model", tiny_captioner_dir, "--review", tmp_path / "r"
    )
    one_line_error(code, err, "no images found")
    code, _, err = sdexp("caption", tmp_path / "empty", "--model", tiny_captioner_dir, "--batch-size", "0")
    assert code == 2 and "--batch-size" in err
