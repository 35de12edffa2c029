"""Generate stories with ACDC from the command line: a story in, numbered frames out.

Each story is drawn frame by frame by an autoregressive model (ARM); every selected frame is
corrected by a diffusion model through SDEdit with a prompt from a memory module, and the ARM
continues from the corrected frame (the paper's Eq. 1-3). Every part is built by name through
`acdc_lib.components`, so the toy world shipped with the repository and the real models (Emu3 or
Janus-Pro ARMs, a Stable Diffusion corrector) are chosen the same way.

    # two toy test stories, on the CPU in seconds
    python -m acdc_lib.generate --stories data/stories/test.jsonl --first 2 --threads 1 --out runs/toy
    # chosen stories of a file
    python -m acdc_lib.generate --stories data/stories/test.jsonl --ids g1-000003 g1-000007 --out runs/toy
    # your own story: one sentence per frame
    python -m acdc_lib.generate "Max the corgi was in the park at night." "He jumped." "Then he sat." --out runs/max
    python -m acdc_lib.generate --sentence "Luna the fox stood in the forest." --sentence "She sat down." \\
        --out runs/luna
    # StoryGPT-V-toy instead of ARM + ACDC (its checkpoints come from make train-toy)
    python -m acdc_lib.generate --stories data/stories/test.jsonl --first 2 --generator storygpt_v --out runs/sgv
    # real models on a GPU, prompts from an LLM (OPENAI_API_KEY, or LLM_BASE_URL for a local server)
    python -m acdc_lib.generate --stories my_stories.jsonl --arm janus --arm-id deepseek-community/Janus-Pro-1B \\
        --dm sd --dm-id stable-diffusion-v1-5/stable-diffusion-v1-5 --memory llm --llm-cache llm.sqlite \\
        --device cuda --dtype float16 --out runs/real

Output, per story, in <out>/<story_id>/: frame_01_arm.png, frame_01_corrected.png (only for corrected
frames), ... (with --scale N also frame_01_arm_xN.png ..., N times larger, nearest neighbour), contact_sheet.png (the ARM's frames above the corrected ones) and story.json (sentences,
prompts, memory source, seeds, every setting, package versions). Every file is written atomically and
story.json last, so it marks the story done: a rerun skips stories whose story.json holds the same
sentences and settings, and a killed run resumes where it stopped. A story done with other settings is
refused (use a fresh --out, or --force to overwrite it).

Story k of the input (its 0-based index in the story file; 0 for a story given on the command line)
draws from the seed `story_seed(--seed, k)`, so its random draws and prompts do not depend on
--batch-size or on which other stories are selected (pixels can differ by one grey level between batch
sizes, where batched float kernels round differently).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from acdc_lib import components, envcheck
from acdc_lib.components import DTYPES, MEMORIES, available, build, build_memory, parse_options
from acdc_lib.defaults import PAPER_GUIDANCE_SCALE, PAPER_NUM_INFERENCE_STEPS, PAPER_STRENGTH
from acdc_lib.io import atomic_write_bytes, atomic_write_json, leftover_target
from acdc_lib.llm import LLMError
from acdc_lib.loop import run_stories, story_generators, story_seed
from acdc_lib.sdedit import steps_for_strength
from acdc_lib.stories import StoryFileError, read_stories
from acdc_lib.types import LoopConfig, Story, StoryResult

PROG = "python -m acdc_lib.generate"
SCHEMA = "acdc-generate"
SCHEMA_VERSION = 1
DEFAULT_LLM_MODEL = "gpt-4o-mini"  # the paper's memory LLM (Appendix D)
LLM_BASE_URL_ENV = "LLM_BASE_URL"  # an OpenAI-compatible server; the key stays in OPENAI_API_KEY
STORY_FILE = "story.json"
SHEET_FILE = "contact_sheet.png"
SHEET_MIN_CELL = 128  # a contact-sheet frame is upscaled (nearest) until its longer side reaches this
SHEET_PAD, SHEET_TITLE_H, SHEET_LABEL_W = 6, 22, 96  # contact-sheet gaps, title row height, row-label column
VERSION_PACKAGES = ("acdc_lib", "torch", "numpy", "pillow", "diffusers", "transformers", "openai")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FRAME_FILE = re.compile(r"frame_\d+_(arm|corrected)(_x\d+)?\.png")


class GenerateError(ValueError):
    """A problem with the user's input or output folder; the message names the value and what is allowed."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _number(text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def _positive_int(text: str) -> int:
    value = _number(text, int, "an int >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; use an int >= 1")
    return value


def _seed(text: str) -> int:
    value = _number(text, int, "a non-negative int")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; seeds are non-negative ints")
    return value


def _strength(text: str) -> float:
    value = _number(text, float, "a number in (0, 1]")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"t' = {value:g} is not allowed; use a number in (0, 1] "
                                         f"(the paper's is {PAPER_STRENGTH})")
    return value


def _guidance(text: str) -> float:
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed; the guidance scale is a number >= 0 "
                                         f"(the paper's is {PAPER_GUIDANCE_SCALE})")
    return value


def _correct(text: str) -> str | int:
    if text in ("all", "none"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; use 'all', 'none' or an int k >= 0 "
                                         "(correct the first k frames)")
    return value


def _device(text: str) -> str:
    try:
        return str(torch.device(text))
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; e.g. cpu, cuda, cuda:1, mps") from None


def _scale(text: str) -> int:
    value = _number(text, int, "an int >= 2")
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; use an int >= 2 (times the frames' side)")
    return value


def _vocabulary(name: str) -> Any:
    """A registered vocabulary (words, no model: cheap to build)."""
    return components.build("vocabulary", name)


def vocabulary_help() -> str:
    """The words of every registered vocabulary, for --help: what a story for those models may say."""
    lines = []
    for name in available("vocabulary"):
        v = _vocabulary(name)
        closed = v.model_words is not None
        head = f"vocabulary {name!r} (--vocabulary {name}): " + (
            f"the {name} models read only these words, and the grammar's small words (a, the, then, ...); a story "
            "with other words is still drawn, with a warning per sentence naming them (real models take any text):"
            if closed else "the words the rule memory resolves:")
        lines += [textwrap.fill(head, 100), *(textwrap.fill(line, 100, initial_indent="  ", subsequent_indent="    ")
                                              for line in v.describe())]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; ARM, corrector and vocabulary choices are the registered components."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, epilog=vocabulary_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sentences", nargs="*", metavar="SENTENCE",
                   help="one story given on the command line, one sentence per frame")
    src = p.add_argument_group("input (a story file, or sentences)")
    src.add_argument("--stories", metavar="PATH", help="a story file (JSONL, the format of acdc_lib.stories)")
    pick = src.add_mutually_exclusive_group()
    pick.add_argument("--first", type=_positive_int, metavar="K", help="only the first K stories of the file")
    pick.add_argument("--ids", nargs="+", metavar="ID",
                      help="only these story ids of the file (space- or comma-separated)")
    src.add_argument("--sentence", action="append", metavar="TEXT",
                     help="a sentence of a story given on the command line (repeat, in order)")
    models = p.add_argument_group("models")
    models.add_argument("--arm", default="toy", choices=sorted(available("arm")), help="the ARM (default: toy)")
    models.add_argument("--arm-id", metavar="ID", help="the ARM's model id or folder (toy: a checkpoint folder)")
    models.add_argument("--dm", default="toy", choices=sorted(available("corrector")),
                        help="the diffusion corrector (default: toy)")
    models.add_argument("--arm-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the ARM (repeatable; values are JSON), e.g. image_size=256 for Emu3")
    models.add_argument("--dm-id", metavar="ID", help="the corrector's model id or folder")
    models.add_argument("--dm-resolution", type=_positive_int, default=None, metavar="PX",
                        help="side the corrector runs at (512 for SD v1.5; default: the frames' own size)")
    models.add_argument("--generator", default=None, choices=sorted(available("story_generator")),
                        help="a whole-story generator instead of ARM + ACDC (storygpt_v: StoryGPT-V-toy, whose "
                             "checkpoints `make train-toy` trains); its frames are written as frame_NN_arm.png and "
                             "nothing is corrected")
    models.add_argument("--generator-id", metavar="ID", help="the generator's checkpoint folder (default: shipped)")
    models.add_argument("--generator-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the generator (repeatable), e.g. variant=no_reg or num_inference_steps=20")
    models.add_argument("--memory", default="rules", choices=MEMORIES,
                        help="where corrector prompts come from: the sentences, the rule resolver or an LLM "
                             "(default: rules)")
    models.add_argument("--vocabulary", default="toy", choices=sorted(available("vocabulary")),
                        help="the words of the rule memory (also the LLM memory's fallback; default: toy)")
    models.add_argument("--llm-model", default=DEFAULT_LLM_MODEL, metavar="NAME",
                        help=f"the LLM of --memory llm (default: {DEFAULT_LLM_MODEL}); the server is "
                             f"${LLM_BASE_URL_ENV} if set, else OpenAI with $OPENAI_API_KEY")
    models.add_argument("--llm-cache", metavar="PATH", help="sqlite file of LLM answers (replayed without a key)")
    run = p.add_argument_group("correction and run")
    run.add_argument("--strength", type=_strength, default=PAPER_STRENGTH,
                     help=f"SDEdit's t' in (0, 1] (default: {PAPER_STRENGTH})")
    run.add_argument("--guidance", type=_guidance, default=PAPER_GUIDANCE_SCALE,
                     help=f"classifier-free guidance scale (default: {PAPER_GUIDANCE_SCALE})")
    run.add_argument("--steps", type=_positive_int, default=PAPER_NUM_INFERENCE_STEPS,
                     help=f"N, the scheduler's steps; int(N * t') of them run (default: {PAPER_NUM_INFERENCE_STEPS})")
    run.add_argument("--correct", type=_correct, default="all", metavar="all|none|K",
                     help="frames to correct: all, none, or the first K (default: all)")
    run.add_argument("--seed", type=_seed, default=0, help="base seed; story k draws from story_seed(seed, k)")
    run.add_argument("--batch-size", type=_positive_int, default=8, help="stories per batched call (default: 8)")
    run.add_argument("--device", type=_device, default="cpu", help="where the models run (default: cpu)")
    run.add_argument("--threads", type=_positive_int, metavar="N",
                     help="CPU threads of torch (default: torch's choice); on a busy machine 1 is often the "
                          "fastest for the toy models")
    run.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="model dtype (default: float32)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="output folder; one subfolder per story")
    out.add_argument("--scale", type=_scale, metavar="N",
                     help="also write every frame N times larger (nearest neighbour) beside it, as "
                          "frame_01_arm_xN.png ...: a 32 x 32 toy frame is too small to look at")
    out.add_argument("--force", action="store_true",
                     help="recompute stories this folder holds with other settings or sentences")
    return p


# --------------------------------------------------------------------------------------------
# Input stories
# --------------------------------------------------------------------------------------------
def sentence_story_id(sentences: Sequence[str]) -> str:
    """The id of a story given on the command line: 'cli-' and 12 hex digits of its sentences' SHA-256."""
    digest = hashlib.sha256(json.dumps(list(sentences), ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"cli-{digest[:12]}"


def _check_story_id(story_id: str) -> None:
    if not _SAFE_ID.fullmatch(story_id):
        raise GenerateError(f"story id {story_id!r} cannot name an output folder; ids may hold letters, digits, "
                            "'.', '_' and '-', starting with a letter or digit")


def load_input(args: argparse.Namespace) -> list[tuple[int, Story]]:
    """The selected stories with their index k (which picks the seed), in input order.

    Args:
        args: parsed arguments (stories / first / ids, or sentences / sentence).
    Raises:
        GenerateError naming the problem: no input, both kinds of input, a missing or invalid file,
        unknown ids, an empty sentence, an id that cannot name a folder.
    """
    cli = list(args.sentence or []) + list(args.sentences or [])
    if args.stories is not None:
        if cli:
            raise GenerateError("give either --stories PATH or sentences, not both")
        path = Path(args.stories)
        if not path.is_file():
            raise GenerateError(f"story file {str(path)!r} does not exist (--stories takes a JSONL story file)")
        try:
            stories = read_stories(path, n_sentences=None)
        except StoryFileError as e:
            raise GenerateError(str(e)) from None
        if not stories:
            raise GenerateError(f"story file {str(path)!r} holds no stories")
        indexed = list(enumerate(stories))
        if args.first is not None:
            if args.first > len(stories):
                raise GenerateError(f"--first {args.first} asks for more stories than the {len(stories)} in {path}")
            indexed = indexed[: args.first]
        elif args.ids is not None:
            wanted = list(dict.fromkeys(i for arg in args.ids for i in arg.split(",") if i))
            by_id = {s.story_id: (k, s) for k, s in indexed}
            unknown = [i for i in wanted if i not in by_id]
            if unknown or not wanted:
                shown = ", ".join(list(by_id)[:5]) + (f", ... ({len(by_id)} ids)" if len(by_id) > 5 else "")
                raise GenerateError(f"unknown story id(s) {unknown or args.ids} in {path}; allowed: {shown}")
            indexed = [by_id[i] for i in wanted]
    else:
        if args.first is not None or args.ids is not None:
            raise GenerateError("--first and --ids select stories of a file; they need --stories PATH")
        if args.sentence and args.sentences:
            raise GenerateError("give the sentences either positionally or with --sentence, not both")
        if not cli:
            raise GenerateError("no story given: pass --stories PATH, or the sentences of one story "
                                "(positional or repeated --sentence)")
        for n, s in enumerate(cli, start=1):
            if not s.strip():
                raise GenerateError(f"sentence {n} ({s!r}) is empty; every sentence needs words")
            if "\n" in s or "\r" in s:
                raise GenerateError(f"sentence {n} ({s!r}) contains a line break; give one sentence per argument")
        sentences = [s.strip() for s in cli]
        indexed = [(0, Story(story_id=sentence_story_id(sentences), sentences=sentences, source="command-line"))]
    for _, s in indexed:
        _check_story_id(s.story_id)
    return indexed


def batches(indexed: Sequence[tuple[int, Story]], batch_size: int) -> list[list[tuple[int, Story]]]:
    """Stories grouped by length (the loop batches equal lengths only), in input order, then cut to batch_size."""
    groups: dict[int, list[tuple[int, Story]]] = {}
    for item in indexed:
        groups.setdefault(len(item[1]), []).append(item)
    return [g[i: i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


# --------------------------------------------------------------------------------------------
# Settings and resume
# --------------------------------------------------------------------------------------------
def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every choice that changes a story's frames or prompts, as stored in story.json and compared on resume.

    The batch size is left out: results do not depend on it. The vocabulary and LLM model are recorded
    only where the memory uses them.
    """
    return {
        "arm": args.arm, "arm_id": args.arm_id, "arm_options": args.arm_options, "dm": args.dm, "dm_id": args.dm_id,
        "dm_resolution": args.dm_resolution,
        "memory": args.memory, "vocabulary": args.vocabulary if args.memory != "none" else None,
        "llm_model": args.llm_model if args.memory == "llm" else None,
        "strength": args.strength, "guidance_scale": args.guidance, "num_inference_steps": args.steps,
        "correct": args.correct, "base_seed": args.seed, "device": args.device, "dtype": args.dtype,
        # only with a generator: folders written before the option existed keep their settings
        **({"generator": args.generator, "generator_id": args.generator_id,
            "generator_options": args.generator_options} if args.generator else {}),
    }


def _identity(story: Story, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    # What must match for a finished story to count as done; JSON round trip so it compares to a loaded file.
    return json.loads(json.dumps({"story_id": story.story_id, "sentences": list(story.sentences), "seed": seed,
                                  "settings": settings}))


def story_status(story_dir: Path, identity: dict[str, Any]) -> tuple[str, str]:
    """("todo" | "done" | "mismatch", why) of one story folder under the current settings."""
    path = story_dir / STORY_FILE
    if not path.is_file():
        return "todo", "not started" if not story_dir.exists() else "unfinished"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return "mismatch", f"{path} is unreadable ({e})"
    diffs = []
    for key in ("story_id", "sentences", "seed"):
        if old.get(key) != identity[key]:
            diffs.append(f"{key} {old.get(key)!r} -> {identity[key]!r}")
    old_settings = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    for key, value in identity["settings"].items():
        if old_settings.get(key, "<absent>") != value:
            diffs.append(f"{key} {old_settings.get(key, '<absent>')!r} -> {value!r}")
    if diffs:
        return "mismatch", "; ".join(diffs)
    missing = [f for f in old.get("files", []) if not (story_dir / f).is_file()]
    return ("todo", f"files missing: {missing}") if missing else ("done", "")


# --------------------------------------------------------------------------------------------
# Images and files
# --------------------------------------------------------------------------------------------
def to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W) float image in [0, 1] with C in {1, 3, 4} -> a PIL image (uint8, rounded)."""
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected a (C, H, W) image with C in 1, 3, 4, got shape {tuple(image.shape)}")
    arr = (image.detach().cpu().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.shape[2] == 3 else "RGBA")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # no metadata: the bytes depend on the pixels only
    return buf.getvalue()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def contact_sheet(arm_images: Sequence[torch.Tensor], corrected: Sequence[torch.Tensor | None]) -> Image.Image:
    """One row of ARM frames and, when any frame was corrected, one of corrected frames; columns titled 1..N.

    Frames are upscaled by an integer factor with nearest-neighbour, so a 32 x 32 toy frame shows as
    128 x 128 pixels without blur; an uncorrected frame leaves a grey cell in the corrected row.
    """
    h, w = arm_images[0].shape[-2:]
    scale = max(1, math.ceil(SHEET_MIN_CELL / max(h, w)))
    cw, ch = w * scale, h * scale
    pad, title_h, label_w = SHEET_PAD, SHEET_TITLE_H, SHEET_LABEL_W
    rows = [("ARM", list(arm_images))]
    if any(c is not None for c in corrected):
        rows.append(("corrected", list(corrected)))
    n = len(arm_images)
    sheet = Image.new("RGB", (label_w + n * (cw + pad) + pad, title_h + len(rows) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(14)
    for i in range(n):
        x = label_w + pad + i * (cw + pad)
        draw.text((x + cw // 2, title_h // 2 + 2), str(i + 1), fill="black", font=font, anchor="mm")
    for r, (label, images) in enumerate(rows):
        y = title_h + pad + r * (ch + pad)
        draw.text((pad, y + ch // 2), label, fill="black", font=font, anchor="lm")
        for i, img in enumerate(images):
            x = label_w + pad + i * (cw + pad)
            if img is None:
                draw.rectangle((x, y, x + cw - 1, y + ch - 1), fill=(225, 225, 225))
            else:
                sheet.paste(to_pil(img).convert("RGB").resize((cw, ch), Image.NEAREST), (x, y))
    return sheet


def scaled_name(name: str, scale: int) -> str:
    """frame_01_arm.png -> frame_01_arm_x4.png: the file of a frame upscaled `scale` times."""
    return f"{name[:-len('.png')]}_x{scale}.png"


def upscale(img: Image.Image, scale: int) -> Image.Image:
    """`img` `scale` times larger, each pixel a scale x scale block (nearest neighbour: no blur)."""
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def write_scaled(story_dir: Path, names: Sequence[str], scale: int) -> list[str]:
    """Write the upscaled copy of every frame file `names` of story_dir that lacks one; returns the copies' names."""
    out = []
    for name in names:
        target = story_dir / scaled_name(name, scale)
        if not target.is_file():
            with Image.open(story_dir / name) as img:
                atomic_write_bytes(target, _png(upscale(img.copy(), scale)))
        out.append(target.name)
    return out


def frame_name(index: int, n_frames: int, kind: str) -> str:
    """File name of 0-based frame `index`: frame_01_arm.png ... (at least two digits, numbered from 01)."""
    return f"frame_{index + 1:0{max(2, len(str(n_frames)))}d}_{kind}.png"


def write_story(story_dir: Path, story: Story, index: int, result: StoryResult, settings: dict[str, Any],
                versions: dict[str, str], scale: int | None = None) -> dict[str, Any]:
    """Write one finished story: frames, contact sheet, then story.json (last: it marks the story done).

    Args:
        story_dir: <out>/<story_id>.
        story: the input story.
        index: its index k in the input (the seed is story_seed(base seed, k)).
        result: the loop's result for it.
        settings: `run_settings` of this run.
        versions: package versions to record.
        scale: also write each frame this many times larger (`scaled_name`), or None.
    Returns:
        the story.json record.
    """
    story_dir.mkdir(parents=True, exist_ok=True)
    # Drop the old marker first: a run killed while rewriting must not leave new frames under an old story.json.
    (story_dir / STORY_FILE).unlink(missing_ok=True)
    n = len(result.frames)
    files, frames = [], []
    for f in result.frames:
        arm_name = frame_name(f.index, n, "arm")
        atomic_write_bytes(story_dir / arm_name, _png(to_pil(f.arm_image)))
        files.append(arm_name)
        corr_name = None
        if f.corrected_image is not None:
            corr_name = frame_name(f.index, n, "corrected")
            atomic_write_bytes(story_dir / corr_name, _png(to_pil(f.corrected_image)))
            files.append(corr_name)
        frames.append({"frame": f.index + 1, "sentence": f.text, "corrected": f.corrected, "prompt": f.prompt,
                       "steps_run": f.steps_run, "arm_image": arm_name, "corrected_image": corr_name})
    if scale is not None:
        for name in files:
            (story_dir / scaled_name(name, scale)).unlink(missing_ok=True)  # an earlier run's copy
        files += write_scaled(story_dir, list(files), scale)
    sheet = contact_sheet([f.arm_image for f in result.frames], [f.corrected_image for f in result.frames])
    atomic_write_bytes(story_dir / SHEET_FILE, _png(sheet))
    files.append(SHEET_FILE)
    for old in story_dir.iterdir():
        # Frames of an earlier (longer, or more corrected) run of this id, and temporary files of a killed one.
        target = leftover_target(old.name)  # what an atomic write killed mid-way left behind
        if (_FRAME_FILE.fullmatch(old.name) and old.name not in files) or (
                target is not None and (_FRAME_FILE.fullmatch(target) or target in (SHEET_FILE, STORY_FILE))):
            old.unlink()
    mem = result.memory
    record = {
        "schema": SCHEMA, "version": SCHEMA_VERSION,
        **_identity(story, result.seed, settings),
        "source": story.source, "index": index,
        "prompts": list(mem.prompts) if mem is not None else None,
        "memory_source": mem.source if mem is not None else None,
        "memory_fallback_reason": mem.fallback_reason if mem is not None else None,
        "steps_run": max((f.steps_run for f in result.frames), default=0),
        "frames": frames, "files": files, "versions": versions,
    }
    atomic_write_json(story_dir / STORY_FILE, record)
    return record


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------
def _build(kind: str, name: str, flag: str, **options: Any) -> Any:
    from acdc_lib.correctors.loading import ModelNotAvailableError

    try:
        return build(kind, name, **options)
    except (ValueError, FileNotFoundError, ModelNotAvailableError) as e:  # one line, no traceback
        raise GenerateError(f"{flag} {name}: {e}") from None


def make_memory(args: argparse.Namespace) -> Any:
    """The memory module of --memory; the vocabulary is always passed explicitly.

    Args:
        args: parsed arguments (memory, vocabulary, llm_model, llm_cache, seed).
    """
    try:
        return build_memory(args.memory, vocabulary=args.vocabulary, llm_model=args.llm_model,
                            llm_base_url=os.environ.get(LLM_BASE_URL_ENV) or None, llm_cache=args.llm_cache,
                            seed=args.seed)
    except (LLMError, ValueError) as e:
        raise GenerateError(f"--memory {args.memory}: {e} (here: set ${LLM_BASE_URL_ENV} or $OPENAI_API_KEY, or "
                            "pass --llm-cache PATH with recorded answers)") from None


def _corrects_any(policy: str | int) -> bool:
    return policy == "all" or (isinstance(policy, int) and policy > 0)


def unknown_word_warnings(stories: Sequence[Story], args: argparse.Namespace) -> list[str]:
    """One warning per sentence that uses words the chosen models never saw.

    The words are those of the vocabularies registered by the backends of the ARM and (when frames are
    corrected) the corrector, where such a vocabulary says its models read a closed set of words (the toy
    world's); models that take any text (real ones) are not checked.
    """
    backends = {available("arm")[args.arm]}
    if getattr(args, "generator", None):  # the generator replaces the ARM and the corrector
        backends = {available("story_generator")[args.generator]}
    elif _corrects_any(args.correct):
        backends.add(available("corrector")[args.dm])
    if not stories:
        return []
    vocabularies = [_vocabulary(name) for name, module in available("vocabulary").items() if module in backends]
    vocabularies = [v for v in vocabularies if v.model_words is not None]
    out = []
    for story in stories:
        for k, sentence in enumerate(story.sentences, start=1):
            unknown = list(dict.fromkeys(w for v in vocabularies for w in v.unknown_words(sentence)))
            if unknown:
                out.append(f"story {story.story_id} sentence {k} ({sentence!r}): the models never saw "
                           f"{', '.join(repr(w) for w in unknown)}; they read them as unknown and draw from the "
                           "other words (the words they know: --help)")
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def _check_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    try:
        args.arm_options = parse_options(args.arm_option)
        args.generator_options = parse_options(args.generator_option, flag="--generator-option")
    except ValueError as e:
        parser.error(str(e))
    if _corrects_any(args.correct):
        try:
            steps_for_strength(args.steps, args.strength)
        except ValueError as e:
            parser.error(f"--strength {args.strength:g} with --steps {args.steps}: {e}")
    kind = torch.device(args.device).type
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        parser.error(f"--device {args.device}: MPS is not available on this machine; use --device cpu")


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stories of parsed `args`, skipping finished ones; returns counts, seconds and the folder.

    Raises:
        GenerateError for bad input or an output folder holding the same stories under other settings.
    """
    t0 = time.perf_counter()
    indexed = load_input(args)
    short = [s for _, s in indexed if isinstance(args.correct, int) and len(s) < args.correct]
    if short:
        raise GenerateError(f"--correct {args.correct} asks for more frames than story {short[0].story_id!r} has "
                            f"({len(short[0])}); use all, none or a k up to its number of sentences")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GenerateError(f"--out {str(out)!r} is a file; give a folder")
    settings = run_settings(args)
    todo, skipped, clashes = [], 0, []
    for k, s in indexed:
        state, why = story_status(out / s.story_id, _identity(s, story_seed(args.seed, k), settings))
        if state == "done":
            skipped += 1
        else:
            todo.append((k, s))
            if state == "mismatch":
                clashes.append(f"{s.story_id} ({why})")
    if clashes and not args.force:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise GenerateError(f"{out} already holds {len(clashes)} of these stories made with other settings or "
                            f"sentences: {'; '.join(clashes[:3])}{more}. Use a fresh --out, or --force to "
                            "overwrite them")
    for line in unknown_word_warnings([s for _, s in todo], args):
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    if args.scale is not None:  # stories done earlier get their upscaled frames too
        pending = {s.story_id for _, s in todo}
        for _, s in indexed:
            if s.story_id not in pending:
                record = json.loads((out / s.story_id / STORY_FILE).read_text(encoding="utf-8"))
                write_scaled(out / s.story_id, [f for f in record["files"] if _FRAME_FILE.fullmatch(f)
                                                and _FRAME_FILE.fullmatch(f).group(2) is None], args.scale)
    done = 0
    if todo and args.generator:
        done = _generate_with(args, todo, len(indexed), skipped, out, settings)
    elif todo:
        dtype = DTYPES[args.dtype]
        corrector = memory = None
        if _corrects_any(args.correct):
            memory = make_memory(args)  # first: an LLM without key, server or cache fails before models load
            corrector = _build("corrector", args.dm, "--dm", model_id=args.dm_id, device=args.device, dtype=dtype,
                               **({"resolution": args.dm_resolution} if args.dm_resolution else {}))
        # an --arm-option dtype=... sets the ARM's dtype alone (the real ARMs run in bfloat16 beside a float16 DM)
        arm = _build("arm", args.arm, "--arm", model_id=args.arm_id, device=args.device,
                     **{"dtype": dtype, **args.arm_options})
        config = LoopConfig(correct_frames=args.correct, strength=args.strength, guidance_scale=args.guidance,
                            num_inference_steps=args.steps, use_memory=True)
        versions = envcheck.versions(VERSION_PACKAGES)
        with tqdm(total=len(indexed), initial=skipped, desc="stories", unit="story") as bar:
            for batch in batches(todo, args.batch_size):
                result = run_stories([s for _, s in batch], arm, corrector, memory, config,
                                     seeds=[story_seed(args.seed, k) for k, _ in batch], device=args.device)
                for (k, s), res in zip(batch, result.stories):
                    write_story(out / s.story_id, s, k, res, settings, versions, scale=args.scale)
                    done += 1
                    bar.update(1)
    return {"done": done, "skipped": skipped, "stories": len(indexed), "seconds": time.perf_counter() - t0,
            "out": out, "ids": [s.story_id for _, s in indexed]}


def generator_results(stories: Sequence[Story], frames: Sequence[torch.Tensor], seeds: Sequence[int]) -> list[StoryResult]:
    """StoryResults of a story generator's frames (no ARM tokens, nothing corrected), for `write_story`."""
    from acdc_lib.types import FrameResult

    none = torch.zeros(0, dtype=torch.long)
    return [StoryResult(s.story_id, seed, [FrameResult(i, s.sentences[i], none, f[i].cpu(), False, None, None, none)
                                           for i in range(f.shape[0])]) for s, f, seed in zip(stories, frames, seeds)]


def _generate_with(args: argparse.Namespace, todo: list[tuple[int, Story]], total: int, skipped: int, out: Path,
                   settings: dict[str, Any]) -> int:
    """Draw the stories of `todo` with --generator; story k draws from story_generators(story_seed(seed, k))[1]."""
    gen = _build("story_generator", args.generator, "--generator", model_id=args.generator_id, device=args.device,
                 dtype=DTYPES[args.dtype], **args.generator_options)
    versions, done = envcheck.versions(VERSION_PACKAGES), 0
    with tqdm(total=total, initial=skipped, desc="stories", unit="story") as bar:
        for batch in batches(todo, args.batch_size):
            seeds = [story_seed(args.seed, k) for k, _ in batch]
            stories = [s for _, s in batch]
            frames = gen.generate(stories, [story_generators(sd, args.device)[1] for sd in seeds])
            for (k, s), res in zip(batch, generator_results(stories, frames, seeds)):
                write_story(out / s.story_id, s, k, res, settings, versions, scale=args.scale)
                done += 1
                bar.update(1)
    return done


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 2 on a usage or input error).

    Args:
        argv: the arguments (None: sys.argv[1:]).
    """
    parser = build_parser()
    args = parser.parse_intermixed_args(None if argv is None else list(argv))
    _check_run(args, parser)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        summary = generate(args)
    except GenerateError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may run inside a caller's process: leave its setting as found
    root, ids = summary["out"].resolve(), summary["ids"]
    shown = ids if len(ids) <= 3 else ids[:2]
    print(f"files (frames, {SHEET_FILE}, {STORY_FILE}): " + ", ".join(f"{root / i}/" for i in shown)
          + (f" and {len(ids) - 2} more story folders in {root}/" if len(ids) > 3 else ""))
    print(f"{_count(summary['done'], 'story')} done, {summary['skipped']} skipped (already done), "
          f"{summary['stories']} selected, in {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
