"""method=textual_inversion: only the new token's vectors train (every other weight byte-identical),
the saved files load in diffusers and carry AUTOMATIC1111's keys, `sdexp generate --embedding` gives
the in-memory image, pivotal tuning saves the LoRA beside the embedding, bad settings fail at the door,
and on tiny_shapes the token learns the striped-star concept while other prompts stay bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sdexp.base_generations import SamplingSettings, generate_images
from sdexp.entry import compose_run_config
from sdexp.errors import ConfigError, UserError
from sdexp.models.loading import load_base
from sdexp.run import preflight
from sdexp.samplers import make_scheduler
from sdexp.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TI = [
    "method=textual_inversion",
    "eval=none",
    "logger=none",
    "data.prompt=a photo of sks toy",
    "data.captions.template='{token} {caption}'",  # the toy captions lack the token: prepend it
    "data.val_images=1",
    "train.val_timesteps=2",
    "method.embedding_lr=0.05",
]
FAST = SamplingSettings(sampler="euler", steps=3, guidance=4.0)


def _fit(overrides: list[str], run_dir):
    cfg = compose_run_config(overrides)
    module = preflight(cfg, require_judge=False)
    trainer = Trainer.from_config(cfg.train, run_dir)
    trainer.fit(module)
    return module, trainer


def _image(pipe, prompt: str, size: int, settings=FAST) -> np.ndarray:
    return np.asarray(generate_images(pipe, [prompt], [0], settings, size)[0], dtype=np.int16)


def _fresh_pipeline(name: str, sampler: str = "euler"):
    base = load_base(name)
    pipe = base.pipeline(make_scheduler(sampler, base.noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return base, pipe


def _file(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def sd1(tmp_path_factory, one_thread):
    """A two-vector token trained 3 steps on tiny (SD 1.x)."""
    from toy_images import write_demo_images

    root = tmp_path_factory.mktemp("ti-sd1")
    data = write_demo_images(root / "data", n=4)
    overrides = ["model=tiny", *TI, f"data.dir={data}", "method.token='<sks-toy>'", "method.num_vectors=2"]
    module, trainer = _fit([*overrides, "train.steps=3"], root / "run")
    return module, trainer, root / "run" / "checkpoints" / "final"


def test_only_the_new_vectors_train(sd1):
    module, trainer, _ = sd1
    fresh = load_base("tiny")
    for trained, original in ((module.base.unet, fresh.unet), (module.base.vae, fresh.vae)):
        before = original.state_dict()
        after = trained.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    encoder, tokenizer = module.base.text_encoders[0], module.base.tokenizers[0]
    before = dict(fresh.text_encoders[0].named_parameters())
    compared = 0
    for name, param in encoder.named_parameters():
        if name.endswith("token_embedding.vectors"):
            continue
        assert torch.equal(param, before[name.replace("token_embedding.original.", "token_embedding.")]), name
        compared += 1
    assert compared == len(before)  # every original weight, the whole embedding table included
    # What the optimizer holds: the two vectors, nothing else; and they moved away from "*".
    (vectors,) = module.vectors()
    held = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in held) == vectors.numel() == 2 * encoder.config.hidden_size
    start = fresh.text_encoders[0].get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("*")]
    assert (vectors - start).abs().max() > 1e-3
    # The token is two consecutive new ids, and a caption is written out with both.
    ids = tokenizer.convert_tokens_to_ids(["<sks-toy>", "<sks-toy>_1"])
    assert ids == [len(fresh.tokenizers[0]), len(fresh.tokenizers[0]) + 1]
    (row,) = module.token_ids(["a <sks-toy> on a table"])
    assert set(ids) <= set(row[0].tolist())


def test_saved_files_load_in_diffusers_and_generate_the_in_memory_image(sd1, tmp_path):
    from sdexp.generate import generate

    module, _, final = sd1
    dim = module.base.text_encoders[0].config.hidden_size
    a1111, meta = _file(final / "sks-toy.safetensors")
    assert set(a1111) == {"emb_params"} and a1111["emb_params"].shape == (2, dim)
    assert meta["sdexp.token"] == "<sks-toy>" and meta["modelspec.architecture"].endswith(
        "/textual-inversion"
    )
    learned, _ = _file(final / "learned_embeds.safetensors")
    assert set(learned) == {"<sks-toy>"} and torch.equal(learned["<sks-toy>"], a1111["emb_params"])

    prompt, size = "a photo of <sks-toy> on a table", module.resolution
    with module.inference_pipeline("euler") as pipe:
        in_memory = _image(pipe, prompt, size)
        ordinary = _image(pipe, "a photo of a dog", size)
    _, plain = _fresh_pipeline("tiny")
    assert np.array_equal(_image(plain, "a photo of a dog", size), ordinary)  # nothing else moved
    assert not np.array_equal(_image(plain, prompt, size), in_memory)  # the token does something
    _, pipe = _fresh_pipeline("tiny")
    pipe.load_textual_inversion(str(final))  # learned_embeds.safetensors, no other argument
    assert np.abs(_image(pipe, prompt, size) - in_memory).max() <= 1
    _, pipe = _fresh_pipeline("tiny")
    pipe.load_textual_inversion(str(final / "sks-toy.safetensors"), token="<sks-toy>")  # the A1111 file
    assert np.abs(_image(pipe, prompt, size) - in_memory).max() <= 1
    # sdexp generate --embedding FILE: the token stored in the file, the PNG names the embedding.
    (png,) = generate(
        "tiny", prompt=prompt, steps=3, guidance=4.0, seed=0, scheduler="euler", out_dir=tmp_path,
        device="cpu", embeddings=[str(final / "sks-toy.safetensors")],
    )  # fmt: skip
    from PIL import Image

    image = Image.open(png)
    assert np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - in_memory).max() <= 1
    assert 'TI hashes: "<sks-toy>: ' in image.info["parameters"]


def test_sdxl_embedding_has_clip_l_and_clip_g_and_loads_per_encoder(tmp_path):
    from toy_images import write_demo_images

    data = write_demo_images(tmp_path / "data", n=2)
    module, _ = _fit(["model=tiny_sdxl", *TI, f"data.dir={data}", "train.steps=2"], tmp_path / "run")
    final = tmp_path / "run" / "checkpoints" / "final"
    assert not (final / "learned_embeds.safetensors").exists()  # diffusers has no one-file SDXL form
    tensors, _ = _file(final / "sks.safetensors")
    widths = [e.get_input_embeddings().embedding_dim for e in module.base.text_encoders]
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "clip_l": (1, widths[0]),
        "clip_g": (1, widths[1]),
    }
    prompt, size = "a photo of <sks> toy", module.resolution
    with module.inference_pipeline("euler") as pipe:
        in_memory = _image(pipe, prompt, size)
    _, pipe = _fresh_pipeline("tiny_sdxl")
    pipe.load_textual_inversion(
        tensors["clip_l"], token="<sks>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        tensors["clip_g"], token="<sks>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    assert np.abs(_image(pipe, prompt, size) - in_memory).max() <= 1


def test_pivotal_tuning_saves_the_lora_beside_the_embedding(tmp_path):
    from toy_images import write_demo_images

    data = write_demo_images(tmp_path / "data", n=2)
    module, trainer = _fit(
        ["model=tiny", *TI, f"data.dir={data}", "method.with_lora=true", "train.steps=2", "train.lr=1e-2"],
        tmp_path / "run",
    )
    final = tmp_path / "run" / "checkpoints" / "final"
    assert (final / "lora.safetensors").is_file() and (final / "sks.safetensors").is_file()
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["embedding", "unet"]
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.05, 1e-2]
    prompt, size = "a photo of <sks> toy", module.resolution
    with module.inference_pipeline("euler") as pipe:
        in_memory = _image(pipe, prompt, size)
    from sdexp.generate import check_embeddings, check_loras, load_embeddings, load_loras

    base, pipe = _fresh_pipeline("tiny")
    load_loras(pipe, check_loras([(final / "lora.safetensors", 1.0)]), base.family)
    load_embeddings(base, check_embeddings([f"{final / 'sks.safetensors'}:<sks>"]))
    assert np.abs(_image(pipe, prompt, size) - in_memory).max() <= 1


def test_settings_that_cannot_work_fail_at_the_door(tmp_path):
    from toy_images import write_demo_images

    data = write_demo_images(tmp_path / "data", n=2)
    base = ["model=tiny", *TI, f"data.dir={data}", "train.steps=1"]
    for bad, key in (
        ("method.token='two words'", "method.token"),
        ("method.num_vectors=0", "method.num_vectors"),
        ("method.init_word='a dog'", "method.init_word"),
        ("data.token=sks", "data.token"),
    ):
        with pytest.raises(ConfigError, match=key):
            compose_run_config([*base, bad])
    # Captions without the token: nothing could train; found before any model loads.
    cfg = compose_run_config([o for o in base if not o.startswith("data.captions")])
    with pytest.raises(UserError, match="none of the 2 training captions contains '<sks>'"):
        preflight(cfg, require_judge=False)
    # Known to the tokenizer (a word of its vocabulary), or an init word of several tokens.
    for bad, message in (
        ("method.token=star", "already a token of the vocabulary"),
        ("method.init_word=sksdog", "method.init_word: 'sksdog' is"),
    ):
        with pytest.raises(ConfigError, match=message):
            _fit([*base, bad], tmp_path / bad.split("=")[0])


@pytest.mark.slow
def test_the_token_learns_the_striped_star_and_nothing_else_moves(tmp_path):
    """tiny_shapes: CLIP-I of the token's images against the concept's rises by a clear margin,
    while images of prompts without the token stay bit-identical to the base's."""
    from PIL import Image

    from sdexp.evaluation.scorer import resolve_clip_spec
    from sdexp.metrics.clip_models import load_clip
    from sdexp.metrics.scores import mean_similarity
    from sdexp.world.shapes import write_concept

    data = write_concept(tmp_path / "data", 16, 0, concept="striped_star", token="<sks>")
    clip = load_clip(resolve_clip_spec("auto", "tiny_shapes"))
    refs = clip.encode_images([Image.open(p).convert("RGB") for p in sorted(data.glob("*.png"))])
    settings = SamplingSettings(steps=10, guidance=4.0)
    backgrounds = ("blue", "green", "white", "black", "yellow", "purple", "orange", "red")
    prompts = [f"a <sks> star on a {bg} background" for bg in backgrounds] * 3
    ordinary = [f"a star on a {bg} background" for bg in backgrounds] + ["a red circle on a blue background"]
    seeds = list(range(len(ordinary)))

    def clip_i(pipe) -> float:
        images = generate_images(pipe, prompts, list(range(len(prompts))), settings, 64)
        return float(mean_similarity(clip.encode_images(images), refs))

    overrides = [
        "model=tiny_shapes", "method=textual_inversion", "method.init_word=star", "method.num_vectors=4",
        "method.embedding_lr=1e-2", "eval=none", "logger=none", f"data.dir={data}", "data.val_images=1",
        "train.val_timesteps=2", "train.steps=100", "train.batch_size=4", "train.scheduler=cosine",
    ]  # fmt: skip
    module, _ = _fit(overrides, tmp_path / "run")
    from sdexp.models.token_embeddings import attach_vectors, word_embedding

    base, pipe = _fresh_pipeline("tiny_shapes", "dpmpp_2m")
    plain = [np.asarray(i) for i in generate_images(pipe, ordinary, seeds, settings, 64)]
    # Before training: the token's vectors as they started, the embedding of "star".
    star = word_embedding(base.tokenizers[0], base.text_encoders[0], "star")
    attach_vectors(base.tokenizers, base.text_encoders, "<sks>", [star.expand(4, -1)])
    before = clip_i(pipe)
    with module.inference_pipeline("dpmpp_2m") as trained:
        after = clip_i(trained)
        same = [np.asarray(i) for i in generate_images(trained, ordinary, seeds, settings, 64)]
    print(f"CLIP-I of '<sks>' prompts: {before:.4f} at the start, {after:.4f} after 100 steps")
    assert after > before + 0.03, (before, after)
    assert all(np.array_equal(a, b) for a, b in zip(plain, same, strict=True))


def test_scoring_generates_with_the_token_and_sdexp_eval_rescores_the_embedding(tmp_path):
    """The run scores its in-memory vectors; `sdexp eval` loads each checkpoint's embedding file
    into the base (and a lone embedding file as its target) and gets the same CLIP-I."""
    import json

    from sdexp.evaluation.cli import eval_run_config, targets_for
    from sdexp.evaluation.runner import evaluate_targets
    from sdexp.run import train_run
    from sdexp.world.shapes import write_concept

    data = write_concept(tmp_path / "data", 4, 0, concept="striped_star", token="<sks>")
    small = ["eval.images=2", "eval.prior_images=2", "eval.steps=2", "eval.fid=false"]
    cfg = compose_run_config(
        ["model=tiny_shapes", "method=textual_inversion", "method.init_word=star", "eval=shapes", *small,
         "logger=none", f"data.dir={data}", "data.val_images=1", "train.val_timesteps=2", "train.steps=2"]
    )  # fmt: skip
    result = train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    logged = {
        r["step"]: r for r in map(json.loads, (result.run_dir / "metrics.jsonl").open()) if "eval/clip_i" in r
    }
    prompts = (result.run_dir / "samples" / "eval_subject").rglob("index.jsonl")
    assert any("<sks>" in line for f in prompts for line in f.read_text().splitlines())
    run_dir, targets = targets_for(result.run_dir, [])
    assert [(t.name, t.lora, t.embedding.name) for t in targets] == [("final", None, "sks.safetensors")]
    rows = evaluate_targets(eval_run_config(run_dir, []), targets, device="cpu", notify=lambda *_: None)
    assert rows[1]["metrics"]["eval/clip_i"] == pytest.approx(logged[2]["eval/clip_i"], abs=1e-4)
    _, (alone,) = targets_for(targets[0].embedding, [])
    assert alone.embedding == targets[0].embedding and alone.lora is None
