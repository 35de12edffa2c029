"""Real ARMs from transformers behind the ARM protocol of `acdc_lib.types`: Emu3 and Janus-Pro.

Both sample frame i from p(v^i | v^{1:i-1}, u^{1:i}) (Eq. 1) with the context laid out as the story
so far, interleaved: sentence 1, frame 1, sentence 2, frame 2, ..., sentence i, image start, where
frame j is whatever the loop passes in `prev_tokens` (after ACDC correction: the re-encoded
corrected frame v~^j = E(x~_0^j)). A single text per story (video, Eq. 4) is placed once before all
frames.

Sampling is our own loop over the model's forward with a KV cache, not transformers' `generate`,
because `generate` draws from the global RNG: here row b draws only from generators[b] (one uniform
per row and token, turned into a code by `acdc_lib.loop.draw_rows`), so a story's frames do not
depend on which stories share its batch, and the same seed gives the same tokens. Classifier-free
guidance runs as a doubled batch (conditional rows, then unconditional rows); rows of different
lengths are left-padded with an attention mask and positions counted from each row's first real token.

Tokens are VQ codebook indices in [0, codebook_size), shape (B, n). `decode` returns frames at the
model's own size in [0, 1]; `encode` accepts frames of any size and resizes them bilinearly
(antialiased) to the model's size first, so a corrector that works at another resolution can hand
its frames straight back. Pixels enter both VQ encoders as 2x - 1 (mean = std = 0.5, the published
image processors' normalisation) and leave the decoders in [-1, 1], mapped back with (x + 1) / 2.

A context window, as the toy ARM's: with `context_frames=K` frame i sees the last K - 1 frames and the
sentences of the frames kept (u^{i-K+1..i}), so a story longer than the model's positions runs; by
default K is as many whole frames as fit the positions (each frame with `TEXT_POSITIONS` for its
sentence). A frame size that leaves no room for one earlier frame is refused when the ARM is built:
neither model could then condition on anything but the text.

Precision follows the authors: the language model in bfloat16 on CUDA (BAAI's Emu3 example and
DeepSeek's Janus scripts), float32 elsewhere; every VQ stays in float32 whatever the LM's dtype, so
codebook distances and decoded pixels are not computed in half precision.

Neither Emu3-Gen nor Janus-Pro was trained on several images in one sequence: a story's context of
earlier frames is outside what either saw in training (see the README's component table).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from acdc_lib.loop import draw_rows
from acdc_lib.sdedit import _load_or_explain, validate_images

__all__ = ["Emu3ARM", "JanusARM", "EMU3_NEGATIVE_PROMPT", "EMU3_POSITIVE_PROMPT", "EMU3_PROMPT_TEMPLATE",
           "JANUS_PRO_PROMPT_TEMPLATE", "TEXT_POSITIONS"]

# BAAI's Emu3-Gen example (github.com/baaivision/Emu3, image_generation.py): this negative prompt,
# classifier_free_guidance = 3.0 and top_k = 2048 with do_sample (temperature 1.0).
EMU3_NEGATIVE_PROMPT = ("lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
                        "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
                        "username, blurry.")
# The same example appends this to every prompt (`prompt += POSITIVE_PROMPT`); we append it to every sentence.
EMU3_POSITIVE_PROMPT = " masterpiece, film grained, best quality."
EMU3_PROMPT_TEMPLATE = "{}" + EMU3_POSITIVE_PROMPT
EMU3_IMAGE_AREA = 720 * 720  # Emu3Processor's default generation area (ratio 1:1)
# DeepSeek's Janus-Pro example (github.com/deepseek-ai/Janus, generation_inference.py): the SFT chat
# format "<|User|>: ...\n\n<|Assistant|>:" + <begin_of_image>, cfg_weight = 5, temperature = 1, no top-k.
# Between turns its conversation template (janus/utils/conversation.py, SeparatorStyle.DeepSeek: sep "\n\n",
# sep2 "<｜end▁of▁sentence｜>") ends every finished assistant turn with the end-of-sentence token.
JANUS_PRO_PROMPT_TEMPLATE = "<|User|>: {}\n\n<|Assistant|>:"
# Positions set aside per frame for its sentence when the default window is chosen (a story sentence with
# Emu3's suffix or Janus-Pro's chat format is 20-50 tokens).
TEXT_POSITIONS = 64


def _default_dtype(device: torch.device) -> torch.dtype:
    # Both authors run their LMs in bfloat16 on GPUs (BAAI's Emu3 image_generation.py: torch_dtype=torch.bfloat16;
    # DeepSeek's generation_inference.py: vl_gpt.to(torch.bfloat16)).
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A torch dtype from itself or its name ("bfloat16", ...); None: the authors' default for `device`."""
    if dtype is None:
        return _default_dtype(device)
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if isinstance(dtype, str) and dtype in names:
        return names[dtype]
    if isinstance(dtype, torch.dtype) and dtype in names.values():
        return dtype
    raise ValueError(f"dtype must be None or one of {list(names)} (or the torch dtype), got {dtype!r}")


def _check_guidance(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{name} must be a finite number >= 1 (1 = no classifier-free guidance), got {value!r}")
    return float(value)


def _check_top_k(value, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ValueError(f"{name} must be None (all tokens) or an int >= 1, got {value!r}")
    return None if value is None else int(value)


class _TransformersARM:
    """Shared by Emu3ARM and JanusARM: settings, input checks, context layout, the sampling loop.

    Subclasses set `codebook_size`, `tokens_per_frame`, `image_size`, `_max_positions` (and
    `_extra_positions`), call `_set_window` at the end of their constructor, and implement `_render`
    (one context row), `_frame_positions`, `_pad_value`, `_forward` (one cached step), `_next_inputs`,
    `_vq`, `_encode_pixels` and `_decode_codes`.

    With `compile=True` the loop runs over transformers' `StaticCache` (sized to the frame) and one
    `torch.compile`d step that holds the forward, CFG, temperature, top-k and the inverse-CDF draw (the mode
    "reduce-overhead", CUDA graphs, on a GPU; the default on a CPU), as gpt-fast does; the prefill stays eager
    and every row draws the same uniforms from its generator as in the eager loop, the default.
    """

    codebook_size: int
    tokens_per_frame: int
    image_size: tuple[int, int]
    _max_positions: int
    _extra_positions = 0  # positions a frame takes beyond its n codes (Emu3: end-of-line tokens)
    _fixed_positions = 1  # positions of a row that are no frame and no sentence (<bos>; Emu3: + negative prompt)

    def __init__(self, model, tokenizer, *, temperature: float, top_k: int | None, guidance_scale: float,
                 first_frame_guidance_scale: float | None, first_frame_top_k: int | None, prompt_template: str,
                 device: str | torch.device, dtype: str | torch.dtype | None, compile: bool = False):
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.compile = compile
        self._step = None  # the compiled decode step, built at first use
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if not isinstance(prompt_template, str) or "{}" not in prompt_template:
            raise ValueError(f"prompt_template must be a str with one '{{}}' for the sentence, got {prompt_template!r}")
        self.temperature = float(temperature)
        self.top_k = _check_top_k(top_k, "top_k")
        self.guidance_scale = _check_guidance(guidance_scale, "guidance_scale")
        self.first_frame_top_k = _check_top_k(first_frame_top_k, "first_frame_top_k")
        self.first_frame_guidance_scale = None if first_frame_guidance_scale is None else \
            _check_guidance(first_frame_guidance_scale, "first_frame_guidance_scale")
        self.prompt_template = prompt_template
        self.device = torch.device(device)
        self.dtype = _dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        # the LM and its heads in `dtype`, every VQ in float32 (BAAI's example keeps its vision tokenizer in
        # float32); each part is cast on its own, so the VQ's weights never pass through half precision
        vq = self._vq()
        for outer in self.model.children():
            for part in (outer.children() if vq in list(outer.children()) else [outer]):
                part.to(dtype=torch.float32 if part is vq else self.dtype)
        self.tokenizer = tokenizer

    def _set_window(self, context_frames: int | None) -> None:
        """Check that a frame leaves room for one earlier frame and set K (`context_frames`)."""
        frame = self._frame_positions()
        most = (self._max_positions - self._fixed_positions) // frame  # frames that fit without text
        if most < 2:
            raise ValueError(f"a frame of {self.image_size[0]}x{self.image_size[1]} pixels takes {frame} positions: "
                             f"the model's {self._max_positions} positions leave no room for one earlier frame, so "
                             f"the ARM could not continue a story; {self._size_hint()}")
        if context_frames is None:
            context_frames = max(2, (self._max_positions - self._fixed_positions) // (frame + TEXT_POSITIONS))
        elif isinstance(context_frames, bool) or not isinstance(context_frames, numbers.Integral) \
                or not 1 <= context_frames <= most:
            raise ValueError(f"context_frames must be None (as many frames as fit) or an int in [1, {most}] (the "
                             f"frames of {frame} positions that the model's {self._max_positions} hold), got "
                             f"{context_frames!r}")
        self.context_frames = int(context_frames)

    def _size_hint(self) -> str:
        return "use a model with more positions"

    def _frame_positions(self) -> int:
        """Positions one frame takes in the context (its codes and markers)."""
        raise NotImplementedError

    def _vq(self) -> torch.nn.Module:
        raise NotImplementedError

    # ---- loading ------------------------------------------------------------------------
    @classmethod
    def _load(cls, model_cls, model_id, what: str, example: str, device, dtype, kwargs) -> "_TransformersARM":
        from transformers import AutoTokenizer

        device = torch.device(device)
        dtype = _dtype(dtype, device)
        # in the checkpoint's own dtype: the constructor casts the LM to `dtype` and the VQ to float32, so a VQ
        # stored in float32 is never rounded through a half-precision load
        model = _load_or_explain(model_cls.from_pretrained, model_id, what, "model_id", example, dtype="auto",
                                 trust_remote_code=False)
        tokenizer = _load_or_explain(AutoTokenizer.from_pretrained, model_id, f"the tokenizer of {what}", "model_id",
                                     example, trust_remote_code=False)
        return cls(model, tokenizer, device=device, dtype=dtype, **kwargs)

    # ---- input checks -------------------------------------------------------------------
    def _check_codes(self, tokens, name: str) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:
            what = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"{name} must be a long tensor of VQ codes, got {what}")
        if tokens.shape[-1] != self.tokens_per_frame:
            raise ValueError(f"{name} must have {self.tokens_per_frame} codes per frame (last dim), "
                             f"got shape {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"{name} must be codes in [0, {self.codebook_size}), found "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def _check_generate(self, texts, prev_tokens, generators) -> None:
        B = len(texts)
        if B == 0 or isinstance(texts, str):
            raise ValueError(f"texts must be a non-empty list with one list of sentences per story, got {texts!r:.80}")
        if not isinstance(prev_tokens, torch.Tensor) or prev_tokens.ndim != 3 or prev_tokens.shape[0] != B:
            shape = tuple(prev_tokens.shape) if isinstance(prev_tokens, torch.Tensor) else type(prev_tokens).__name__
            raise ValueError(f"prev_tokens must be (B={B}, i-1, {self.tokens_per_frame}), got {shape}")
        self._check_codes(prev_tokens, "prev_tokens")
        if len(generators) != B:
            raise ValueError(f"need one generator per story: {B} stories, {len(generators)} generators")
        for b, g in enumerate(generators):
            if not isinstance(g, torch.Generator) or g.device.type != self.device.type:
                where = g.device if isinstance(g, torch.Generator) else type(g).__name__
                raise ValueError(f"generators[{b}] must be a torch.Generator on {self.device.type} (where the "
                                 f"model samples), got {where}")
        n_prev = prev_tokens.shape[1]
        for b, story in enumerate(texts):
            if isinstance(story, str) or not all(isinstance(s, str) for s in story) \
                    or len(story) not in {n_prev + 1, 1}:
                raise ValueError(f"texts[{b}] must hold the {n_prev + 1} sentences u^1..u^{n_prev + 1} (or one prompt "
                                 f"for all frames), got {story!r:.120}")

    # ---- the story as a sequence --------------------------------------------------------
    @staticmethod
    def _segments(sentences: Sequence[str], frames: torch.Tensor) -> list[tuple[str, Any]]:
        """Eq. (1)'s context as [("text", u^1), ("frame", v^1), ..., ("text", u^i), ("open", None)].

        One sentence for several frames (video, Eq. 4) goes once, before all frames.
        """
        if len(sentences) == len(frames) + 1:
            parts = [p for s, f in zip(sentences, frames) for p in (("text", s), ("frame", f))]
            return parts + [("text", sentences[-1]), ("open", None)]
        return [("text", sentences[0])] + [("frame", f) for f in frames] + [("open", None)]

    def _pad_value(self):
        raise NotImplementedError

    def _left_pad(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (L_r, ...) -> (R, L, ...) left-padded, and the (R, L) attention mask."""
        L = max(r.shape[0] for r in rows)
        out = torch.full((len(rows), L, *rows[0].shape[1:]), self._pad_value(), dtype=rows[0].dtype,
                         device=self.device)                                   # (R, L, ...)
        mask = torch.zeros(len(rows), L, dtype=torch.long, device=self.device)  # (R, L)
        for r, row in enumerate(rows):
            out[r, L - row.shape[0]:] = row
            mask[r, L - row.shape[0]:] = 1
        return out, mask

    # ---- Eq. (1) -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, texts: Sequence[Sequence[str]], prev_tokens: torch.LongTensor,
                 generators: Sequence[torch.Generator]) -> torch.LongTensor:
        """Sample frame i's n codes for every story (Eq. 1).

        Args:
            texts: per story, the sentences u^1..u^i (or one prompt used for every frame).
            prev_tokens: (B, i-1, n) codes of the frames so far; (B, 0, n) at the first frame. Only the last
                K - 1 (K = `context_frames`) and their sentences enter the context.
            generators: B torch.Generators on the model's device; row b uses generators[b] only.
        Returns:
            (B, n) long codes in [0, codebook_size).
        """
        self._check_generate(texts, prev_tokens, generators)
        first = prev_tokens.shape[1] == 0
        # The paper samples the first frame more freely (higher CFG, larger top-k) than the rest.
        guidance = self.first_frame_guidance_scale if first and self.first_frame_guidance_scale is not None \
            else self.guidance_scale
        top_k = self.first_frame_top_k if first and self.first_frame_top_k is not None else self.top_k
        keep = self.context_frames - 1  # earlier frames in the window
        if prev_tokens.shape[1] > keep:
            texts = [list(s)[len(s) - keep - 1:] if len(s) > 1 else list(s) for s in texts]
            prev_tokens = prev_tokens[:, prev_tokens.shape[1] - keep:]
        prev = prev_tokens.to(self.device)
        segments = [self._segments(list(s), prev[b]) for b, s in enumerate(texts)]
        rows = [self._render(s, cond=True) for s in segments]
        if guidance != 1:
            rows += [self._render(s, cond=False) for s in segments]
        inputs, mask = self._left_pad(rows)                                     # (R, L[, D]), (R, L)
        need = inputs.shape[1] + self.tokens_per_frame + self._extra_positions
        if need > self._max_positions:
            raise ValueError(f"a context of {prev.shape[1]} frames plus the new one needs {need} positions, more than "
                             f"the model's {self._max_positions}; pass a smaller context_frames (now "
                             f"{self.context_frames}), shorter sentences or a smaller image_size")
        if self.compile:
            return self._sample_compiled(inputs, mask, list(generators), guidance, top_k)
        return self._sample(inputs, mask, list(generators), guidance, top_k)

    def _sample(self, inputs, mask, generators, guidance: float, top_k: int | None) -> torch.LongTensor:
        """The cached sampling loop: n steps, each one forward over the new inputs of all R rows."""
        B, R, n = len(generators), inputs.shape[0], self.tokens_per_frame
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (R, L) positions from each row's first real token
        out = torch.empty(B, n, dtype=torch.long, device=self.device)
        past = None
        for k in range(n):
            logits, past = self._forward(inputs, mask, pos, past)              # (R, codebook_size)
            out[:, k] = self._pick(logits, guidance, top_k, generators)         # (B,)
            if k + 1 == n:
                break
            inputs = self._next_inputs(out[:, k], k, R // B)                   # (R, t[, D])
            t = inputs.shape[1]
            mask = torch.cat([mask, mask.new_ones(R, t)], dim=1)               # (R, L + t)
            pos = pos[:, -1:] + torch.arange(1, t + 1, device=self.device)     # (R, t)
        return out

    def _decode_step(self, inputs, mask, pos, cache_position, past, u, guidance: float,
                     top_k: int | None) -> torch.LongTensor:
        """One cached forward of the new inputs of all R rows, then (B,) codes drawn with uniforms u (B,)."""
        logits, _ = self._forward(inputs, mask, pos, past, cache_position)      # (R, codebook_size)
        return draw_rows(self._scores(logits, guidance, top_k, u.shape[0]).softmax(-1), u)

    def _compiled_step(self):
        """`_decode_step` through `torch.compile` (CUDA graphs on a GPU), built at first use and kept."""
        if self._step is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._step = torch.compile(self._decode_step, mode=mode)
        return self._step

    def _sample_compiled(self, inputs, mask, generators, guidance: float, top_k: int | None) -> torch.LongTensor:
        """The sampling loop over a StaticCache and the compiled `_decode_step` (compile=True)."""
        from transformers import StaticCache

        B, (R, L), n = len(generators), mask.shape, self.tokens_per_frame
        total = L + n + self._extra_positions
        step = self._compiled_step()
        past = StaticCache(config=self.model.config, max_cache_len=total)
        full = torch.cat([mask, mask.new_ones(R, total - L)], dim=1)           # (R, total): later keys are causal
        pos = (mask.cumsum(-1) - 1).clamp(min=0)                                # (R, L)
        out = torch.empty(B, n, dtype=torch.long, device=self.device)
        logits, _ = self._forward(inputs, full, pos, past, torch.arange(L, device=self.device))  # eager prefill
        out[:, 0] = self._pick(logits, guidance, top_k, generators)
        cur = L
        for k in range(1, n):
            inputs = self._next_inputs(out[:, k - 1], k - 1, R // B)           # (R, t[, D])
            t = inputs.shape[1]
            pos = pos[:, -1:] + torch.arange(1, t + 1, device=self.device)     # (R, t)
            out[:, k] = step(inputs, full, pos, torch.arange(cur, cur + t, device=self.device), past,
                             self._uniforms(generators), guidance, top_k)
            cur += t
        return out

    def _scores(self, logits: torch.Tensor, guidance: float, top_k: int | None, batch: int) -> torch.Tensor:
        """(R, V) logits -> (B, V) float32 scores the codes are drawn from: CFG on the doubled batch, temperature,
        top-k (-inf outside)."""
        logits = logits.float()
        if logits.shape[0] == 2 * batch:  # rows [0, B) conditional, [B, 2B) unconditional
            cond, uncond = logits[:batch], logits[batch:]
            logits = uncond + guidance * (cond - uncond)                        # (B, V)
        logits = logits / self.temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]                     # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits

    def _pick(self, logits: torch.Tensor, guidance: float, top_k: int | None,
              generators: Sequence[torch.Generator]) -> torch.LongTensor:
        """(R, V) logits -> (B,) codes: `_scores`, then one draw per row from its own generator."""
        scores = self._scores(logits, guidance, top_k, len(generators))         # (B, V)
        return draw_rows(scores.softmax(-1), self._uniforms(generators))

    def _uniforms(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(B,) one uniform per row from its own generator, on the model's device (the draw of one token)."""
        return torch.stack([torch.rand((), generator=g, device=g.device) for g in generators]).to(self.device)

    # ---- D and E -------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, tokens: torch.LongTensor) -> torch.Tensor:
        """(B, n) codes -> (B, 3, H, W) float32 images in [0, 1] at the model's `image_size` (x_0^i = D(v^i))."""
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be (B, {self.tokens_per_frame}), got {shape}")
        self._check_codes(tokens, "tokens")
        x = self._decode_codes(tokens.to(self.device))                         # (B, 3, H, W) in [-1, 1]
        return ((x.float() + 1) / 2).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.LongTensor:
        """(B, 3, H, W) images in [0, 1], any H, W -> (B, n) codes (v~^i = E(x~_0^i)); resized to `image_size` first."""
        validate_images(images)
        if images.shape[1] != 3:
            raise ValueError(f"images must be RGB (B, 3, H, W), got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False,
                              antialias=True).clamp(0.0, 1.0)                   # (B, 3, *image_size)
        return self._encode_pixels(x * 2 - 1)                                    # (B, n); the VQ is float32


class Emu3ARM(_TransformersARM):
    """Emu3 (`transformers.Emu3ForConditionalGeneration`, e.g. BAAI/Emu3-Gen-hf) behind the ARM protocol.

    Frames are laid out as Emu3's processor writes an image: <|image start|> "h*w" <|image token|>,
    then h rows of w visual tokens each closed by an end-of-line token <|extra_200|>, then
    <|extra_201|> (end of frame) and <|image end|>. The context starts with <bos>; the new frame is
    opened with the same header, its logits restricted to visual tokens, and after each row the
    end-of-line token is fed, as Emu3 generates. The unconditional rows of CFG hold the negative
    prompt in place of all sentences and keep the earlier frames, so guidance pushes toward the text
    while both branches see the same visual context.

    Args:
        model: an Emu3ForConditionalGeneration (its config's vocabulary_map names the visual tokens).
        tokenizer: its tokenizer (text of the sentences and of the "h*w" size).
        image_size: (H, W) pixels (int: square) of a frame, multiples of the VQ's spatial factor
            (8 for Emu3); n = (H / 8) * (W / 8). None: the processor's default area 720 x 720 at 1:1
            (config.image_area when set), i.e. 90 x 90 = 8100 tokens per frame; Emu3-Gen's 9216 positions
            then hold one frame only, which is refused: stories need a smaller size. 512 (4,169 positions a
            frame, two frames in context) is the smallest size Emu3's image processor does not upscale (its
            smart_resize brings anything under 512 x 512 up), and it leaves room for an earlier frame.
        temperature: softmax temperature (> 0).
        top_k: keep the k most likely visual tokens (None: all).
        guidance_scale: classifier-free guidance (>= 1; 1 runs no unconditional rows).
        first_frame_guidance_scale, first_frame_top_k: the same for the first frame (None: as the rest).
        negative_prompt: the unconditional rows' text.
        prompt_template: how a sentence is written into the context; default BAAI's: the sentence and
            " masterpiece, film grained, best quality." ("{}" = as is).
        context_frames: K, the frames the model sees (the new one included); None: as many as fit.
        device: where the model runs.
        dtype: the language model's dtype; None -> bfloat16 on CUDA, float32 elsewhere (the VQ: float32).
        compile: sample through a static cache and one `torch.compile`d decode step (see `_TransformersARM`);
            False (the default): the eager loop.
    """

    _boi, _eoi, _wrapper, _eof = "<|image start|>", "<|image end|>", "<|image token|>", "<|extra_201|>"

    def __init__(self, model, tokenizer, *, image_size: int | tuple[int, int] | None = None,
                 temperature: float = 1.0, top_k: int | None = 2048, guidance_scale: float = 3.0,
                 first_frame_guidance_scale: float | None = None, first_frame_top_k: int | None = None,
                 negative_prompt: str = EMU3_NEGATIVE_PROMPT, prompt_template: str = EMU3_PROMPT_TEMPLATE,
                 context_frames: int | None = None, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype | None = None, compile: bool = False):
        super().__init__(model, tokenizer, temperature=temperature, top_k=top_k, guidance_scale=guidance_scale,
                         first_frame_guidance_scale=first_frame_guidance_scale, first_frame_top_k=first_frame_top_k,
                         prompt_template=prompt_template, device=device, dtype=dtype, compile=compile)
        vocab = model.config.vocabulary_map or {}
        missing = [t for t in (self._boi, self._eoi, self._wrapper, self._eof, "<|extra_200|>") if t not in vocab]
        mapping = model.model.vocabulary_mapping
        if missing or not mapping.image_tokens:
            raise ValueError(f"the model's config.vocabulary_map lacks Emu3's image tokens "
                             f"{missing or 'visual tokens'}; is this an Emu3 checkpoint?")
        self.codebook_size = int(model.config.vq_config.codebook_size)
        if len(mapping.image_tokens) != self.codebook_size:
            raise ValueError(f"vocabulary_map has {len(mapping.image_tokens)} visual tokens but the VQ codebook has "
                             f"{self.codebook_size} entries")
        self._visual_ids = mapping.img2bpe_mapping_tensor.long().to(self.device)  # code -> token id
        self._eol = int(mapping.eol_token_id)
        self._ids = {t: int(vocab[t]) for t in (self._boi, self._eoi, self._wrapper, self._eof)}
        text = model.config.text_config
        self._bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else text.bos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else text.pad_token_id
        self._pad = int(pad if pad is not None else 0)  # any id: padded positions are masked out
        self.spatial_factor = int(model.model.vqmodel.vision_spatial_factor)
        if image_size is None:
            side = round(math.sqrt(getattr(model.config, "image_area", EMU3_IMAGE_AREA)) / self.spatial_factor)
            image_size = side * self.spatial_factor
        size = (image_size, image_size) if isinstance(image_size, numbers.Integral) else tuple(image_size) \
            if isinstance(image_size, (tuple, list)) else ()
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < self.spatial_factor
                                 or s % self.spatial_factor for s in size):
            raise ValueError(f"image_size must be (H, W) pixels (or one int), positive multiples of the VQ's spatial "
                             f"factor {self.spatial_factor}, got {image_size!r}")
        self.image_size = (int(size[0]), int(size[1]))
        self.grid = (self.image_size[0] // self.spatial_factor, self.image_size[1] // self.spatial_factor)
        self.tokens_per_frame = self.grid[0] * self.grid[1]
        self._extra_positions = self.grid[0] - 1  # end-of-line tokens fed between rows
        self._max_positions = int(model.config.text_config.max_position_embeddings)
        self.negative_prompt = negative_prompt
        h, w = self.grid
        self._header = torch.tensor([self._ids[self._boi], *self._text_ids(f"{h}*{w}"), self._ids[self._wrapper]],
                                    device=self.device)  # <|image start|> h*w <|image token|>
        self._fixed_positions = 1 + len(self._text_ids(negative_prompt))  # <bos> + the unconditional rows' text
        self._set_window(context_frames)

    def _frame_positions(self) -> int:
        h, w = self.grid
        return len(self._header) + h * (w + 1) + 2  # header, rows closed by end-of-line, eof, eoi

    def _size_hint(self) -> str:
        room = (self._max_positions - self._fixed_positions) // 2 - len(self._header) - 2  # one frame's rows
        g = 1  # the largest square grid of g rows of g codes + end-of-line that two frames hold
        while (g + 1) * (g + 2) <= room:
            g += 1
        return f"pass a smaller image_size (at most {g * self.spatial_factor} for square frames)"

    def _vq(self) -> torch.nn.Module:
        return self.model.model.vqmodel

    @classmethod
    def from_pretrained(cls, model_id, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                        **kwargs) -> "Emu3ARM":
        """Load Emu3ForConditionalGeneration + tokenizer (no remote code) and wrap them.

        Args:
            model_id: a Hub id (e.g. "BAAI/Emu3-Gen-hf") or a folder written by save_pretrained.
            device, dtype: as in the constructor.
            **kwargs: the constructor's sampling settings (image_size, temperature, top_k, ...).
        Raises:
            ModelNotAvailableError when the model or tokenizer cannot be found, saying what to pass;
            ValueError, before the weights load, when a frame of `image_size` leaves no room for an earlier one.
        """
        from transformers import AutoConfig, Emu3ForConditionalGeneration

        config = _load_or_explain(AutoConfig.from_pretrained, model_id, "an Emu3 config", "model_id",
                                  " (e.g. 'BAAI/Emu3-Gen-hf')", trust_remote_code=False)
        factor = 2 ** (len(config.vq_config.channel_multiplier) - 1)
        size = kwargs.get("image_size")
        if size is None:  # as the constructor: the config's area at 1:1
            size = round(math.sqrt(getattr(config, "image_area", EMU3_IMAGE_AREA)) / factor) * factor
        size = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
        if len(size) == 2 and all(isinstance(v, numbers.Integral) for v in size):
            h, w = size[0] // factor, size[1] // factor
            least = h * (w + 1) + 4  # a frame's rows and four markers, before the "h*w" text
            if 1 + 2 * least > config.text_config.max_position_embeddings:  # the constructor's check, cheaply
                raise ValueError(f"a frame of {size[0]}x{size[1]} pixels takes more than {least} positions: the "
                                 f"model's {config.text_config.max_position_embeddings} positions leave no room for one "
                                 f"earlier frame, so the ARM could not continue a story; pass a smaller image_size "
                                 f"(512 is what Emu3's processor encodes without upscaling)")
        return cls._load(Emu3ForConditionalGeneration, model_id, "an Emu3 model (Emu3ForConditionalGeneration)",
                         " (e.g. 'BAAI/Emu3-Gen-hf')", device, dtype, kwargs)

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _frame_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """(n,) codes -> Emu3's image block: header, h rows of (w visual tokens + eol), eof, eoi."""
        h, w = self.grid
        rows = torch.cat([self._visual_ids[codes].view(h, w),
                          torch.full((h, 1), self._eol, device=self.device)], dim=1)  # (h, w + 1)
        tail = torch.tensor([self._ids[self._eof], self._ids[self._eoi]], device=self.device)
        return torch.cat([self._header, rows.flatten(), tail])

    def _render(self, segments, cond: bool) -> torch.Tensor:
        """One context row as (L,) token ids; unconditional rows swap all sentences for the negative prompt."""
        parts = [torch.tensor([self._bos] + ([] if cond else self._text_ids(self.negative_prompt)), device=self.device)]
        for kind, value in segments:
            if kind == "text" and cond:
                parts.append(torch.tensor(self._text_ids(self.prompt_template.format(value)), dtype=torch.long,
                                          device=self.device))
            elif kind == "frame":
                parts.append(self._frame_ids(value))
            elif kind == "open":
                parts.append(self._header)
        return torch.cat(parts)

    def context_ids(self, texts: Sequence[Sequence[str]], prev_tokens: torch.LongTensor) -> list[list[int]]:
        """The conditional context of frame i per story, as token id lists (for inspection and tests)."""
        self._check_codes(prev_tokens, "prev_tokens")
        prev = prev_tokens.to(self.device)
        return [self._render(self._segments(list(s), prev[b]), cond=True).tolist() for b, s in enumerate(texts)]

    def _pad_value(self):
        return self._pad

    def _forward(self, inputs, mask, pos, past, cache_position=None):
        res = self.model(input_ids=inputs, attention_mask=mask, position_ids=pos, past_key_values=past,
                         use_cache=True, logits_to_keep=1, cache_position=cache_position)
        return res.logits[:, -1, self._visual_ids], res.past_key_values        # only visual tokens are drawn

    def _next_inputs(self, codes, k, copies):
        step = self._visual_ids[codes][:, None]                                 # (B, 1)
        if (k + 1) % self.grid[1] == 0:  # a row of w codes is done: Emu3 closes it with end-of-line
            step = torch.cat([step, torch.full_like(step, self._eol)], dim=1)  # (B, 2)
        return step.repeat(copies, 1)                                           # (R, t)

    def _encode_pixels(self, px: torch.Tensor) -> torch.LongTensor:
        sizes = torch.tensor([self.image_size] * px.shape[0], device=self.device)
        codes = self.model.model.vqmodel.encode(px, sizes).image_tokens         # B x (h, w)
        return torch.stack(codes).reshape(px.shape[0], -1).long()              # (B, n)

    def _decode_codes(self, tokens: torch.LongTensor) -> torch.Tensor:
        return self.model.model.vqmodel.decode(tokens.view(-1, *self.grid))    # (B, 3, H, W)


class JanusARM(_TransformersARM):
    """Janus / Janus-Pro (`transformers.JanusForConditionalGeneration`) behind the ARM protocol.

    The context is a sequence of embeddings: text through the LM's token embeddings, frames through
    `prepare_embeddings_for_image_generation` (the generation VQ's codes, as Janus feeds back its own
    samples), each frame wrapped in <begin_of_image> ... <end_of_image>. Logits come from the
    `generation_head` on the last hidden state. As DeepSeek's conversation template ends every finished
    assistant turn with <｜end▁of▁sentence｜>, a frame followed by the next sentence is closed with it.
    The unconditional rows of CFG replace every text token by <pad> and keep <bos>, the image markers,
    the separators and the earlier frames (Janus blanks the prompt this way), so guidance pushes toward
    the text.

    Frames are re-encoded with DeepSeek's nearest-code rule (L2-normalised vectors, see `_encode_pixels`).

    Args:
        model: a JanusForConditionalGeneration; a frame is vq num_patches^2 codes (24 x 24 = 576 at
            384 x 384 for Janus-Pro).
        tokenizer: its tokenizer.
        temperature: softmax temperature (> 0).
        top_k: keep the k most likely codes (None: all, as Janus samples).
        guidance_scale: classifier-free guidance (>= 1; 1 runs no unconditional rows).
        first_frame_guidance_scale, first_frame_top_k: the same for the first frame (None: as the rest).
        prompt_template: how a sentence is written into the context; default Janus-Pro's chat format.
        context_frames: K, the frames the model sees (the new one included); None: as many as fit.
        device: where the model runs.
        dtype: the language model's dtype; None -> bfloat16 on CUDA, float32 elsewhere (the VQ: float32).
        compile: sample through a static cache and one `torch.compile`d decode step (see `_TransformersARM`);
            False (the default): the eager loop.
    """

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, top_k: int | None = None,
                 guidance_scale: float = 5.0, first_frame_guidance_scale: float | None = None,
                 first_frame_top_k: int | None = None, prompt_template: str = JANUS_PRO_PROMPT_TEMPLATE,
                 context_frames: int | None = None, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype | None = None, compile: bool = False):
        super().__init__(model, tokenizer, temperature=temperature, top_k=top_k, guidance_scale=guidance_scale,
                         first_frame_guidance_scale=first_frame_guidance_scale, first_frame_top_k=first_frame_top_k,
                         prompt_template=prompt_template, device=device, dtype=dtype, compile=compile)
        vq = model.config.vq_config
        self.codebook_size = int(vq.num_embeddings)
        side = int(vq.num_patches)
        self.tokens_per_frame = side * side
        self.image_size = (side * 2 ** (len(vq.channel_multiplier) - 1),) * 2  # the VQ's downsampling
        self._max_positions = int(model.config.text_config.max_position_embeddings)
        ids = {}
        for name, default in (("boi_token", "<begin_of_image>"), ("eoi_token", "<end_of_image>")):
            token = getattr(tokenizer, name, None) or default
            ids[name] = tokenizer.convert_tokens_to_ids(token)
            if ids[name] is None or ids[name] == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no {token!r} token; is this a Janus checkpoint?")
        self._boi, self._eoi = ids["boi_token"], ids["eoi_token"]
        text = model.config.text_config
        self._bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else text.bos_token_id
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else text.pad_token_id
        self._eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else text.eos_token_id
        self._set_window(context_frames)

    def _frame_positions(self) -> int:
        return self.tokens_per_frame + 3  # <begin_of_image>, the codes, <end_of_image>, <｜end▁of▁sentence｜>

    def _vq(self) -> torch.nn.Module:
        return self.model.model.vqmodel

    @classmethod
    def from_pretrained(cls, model_id, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                        **kwargs) -> "JanusARM":
        """Load JanusForConditionalGeneration + tokenizer (no remote code) and wrap them.

        Args:
            model_id: a Hub id (e.g. "deepseek-community/Janus-Pro-1B") or a folder written by save_pretrained.
            device, dtype: as in the constructor.
            **kwargs: the constructor's sampling settings (temperature, top_k, guidance_scale, ...).
        Raises:
            ModelNotAvailableError when the model or tokenizer cannot be found, saying what to pass.
        """
        from transformers import JanusForConditionalGeneration

        return cls._load(JanusForConditionalGeneration, model_id, "a Janus model (JanusForConditionalGeneration)",
                         " (e.g. 'deepseek-community/Janus-Pro-1B')", device, dtype, kwargs)

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return self.model.get_input_embeddings()(torch.tensor(ids, dtype=torch.long, device=self.device))  # (t, D)

    def _render(self, segments, cond: bool) -> torch.Tensor:
        """One context row as (L, D) input embeddings; unconditional rows have <pad> for every text token."""
        parts = [self._ids([self._bos])]
        after_frame = False
        for kind, value in segments:
            if kind == "text":
                if after_frame:  # the assistant turn that drew the frame is over (DeepSeek's sep2)
                    parts.append(self._ids([self._eos]))
                ids = self.tokenizer(self.prompt_template.format(value), add_special_tokens=False).input_ids
                parts.append(self._ids(ids if cond else [self._pad] * len(ids)))
            elif kind == "frame":
                codes = self.model.prepare_embeddings_for_image_generation(value)  # (n, D)
                parts += [self._ids([self._boi]), codes, self._ids([self._eoi])]
            elif kind == "open":
                parts.append(self._ids([self._boi]))
            after_frame = kind == "frame"
        return torch.cat(parts)                                                 # (L, D)

    def _pad_value(self):
        return 0.0  # padded embeddings are masked out

    def _forward(self, inputs, mask, pos, past, cache_position=None):
        res = self.model.model.language_model(inputs_embeds=inputs, attention_mask=mask, position_ids=pos,
                                              past_key_values=past, use_cache=True, cache_position=cache_position)
        return self.model.model.generation_head(res.last_hidden_state[:, -1]), res.past_key_values  # (R, V)

    def _next_inputs(self, codes, k, copies):
        return self.model.prepare_embeddings_for_image_generation(codes.repeat(copies)[:, None])  # (R, 1, D)

    def _encode_pixels(self, px: torch.Tensor) -> torch.LongTensor:
        # DeepSeek's VectorQuantizer (janus/models/vq_model.py), with l2_norm=True as Janus-Pro's VQ is configured,
        # L2-normalises the encoder's vectors and the codebook before the nearest-code lookup, and decodes from
        # the normalised codebook. transformers' JanusVQVAE.encode looks up un-normalised vectors (while its
        # decoder normalises), which picks other codes for many vectors; so the lookup is done here as the
        # authors do, on the library's encoder.
        vq = self.model.model.vqmodel
        z = vq.quant_conv(vq.encoder(px))                                      # (B, D, h, w)
        z = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)  # (B*h*w, D)
        book = F.normalize(vq.quantize.embedding.weight, dim=-1)                # (V, D)
        return (z @ book.T).argmax(-1).view(px.shape[0], -1)                    # (B, n): max cosine = min distance

    def _decode_codes(self, tokens: torch.LongTensor) -> torch.Tensor:
        return self.model.model.vqmodel.decode(tokens)                          # (B, 3, H, W)
