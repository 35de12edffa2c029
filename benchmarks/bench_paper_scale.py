"""One ACDC frame at the paper's scale: the real architectures with random weights, seconds per stage.

Target (informational, no pass/fail): the per-frame seconds of each stage of ACDC at the size the paper
runs, and each stage's share, on this machine:

  ARM tokens   a Janus-Pro-1B-sized LM (LlamaForCausalLM: hidden 2048, 24 layers, 16 heads, MLP 5632,
               vocab 102,400) drawing 576 image tokens (one 384 px frame) with a KV cache and
               classifier-free guidance as a doubled batch;
  decode       the ARM's D, stood in for by Stable Diffusion v1.5's VAE decoder at 512 x 512;
  SDEdit       Stable Diffusion v1.5 img2img at N = 50, t' = 0.5, CFG 7.5: the CLIP text encoder (prompt
               and empty prompt), the VAE encoder, int(50 x 0.5) = 25 UNet forwards of batch 2B, the VAE
               decoder;
  re-encode    the ARM's E, stood in for by SD v1.5's VAE encoder at 512 x 512.

Then (informational, no pass/fail) the same LM's decode step, eager against compiled, per CFG token step at
batch 1 and 2 stories (2 and 4 LM rows): eager is the real ARMs' eager loop (their `_forward` over
transformers' DynamicCache, then `_pick`: CFG, temperature, the inverse-CDF draw from each row's
generator); compiled is their `compile=True` step (`_compiled_step`: the same forward and draw in one
`torch.compile`d call over a StaticCache sized as the ARM sizes it for this frame, prompt + 576 codes).
Both start from the same cache of 32 + 288 positions (random keys and values), the middle of a frame, whose
step time is the frame's mean; one first step (eager) or the compilation (compiled, timed apart and
excluded; torch.compile's on-disk cache shortens it on a repeat run), a few warm-up steps, then
`--decode-steps` timed steps. The LM is wrapped in the ARMs' own sampling class (`_TransformersARM`) with a
`_forward` like Emu3ARM's (token ids in, the last position's logits out), so the code timed is the code the
ARMs run. On CUDA it runs in bfloat16, the ARMs' default there, and the compiled step uses CUDA graphs
(torch.compile's "reduce-overhead"), as the ARMs do.

    .venv/bin/python benchmarks/bench_paper_scale.py            # --quick (default): batch 1, fewest runs
    .venv/bin/python benchmarks/bench_paper_scale.py --no-quick # batch 1 and 2, two timed runs of each part
    .venv/bin/python benchmarks/bench_paper_scale.py --full-counts   # run all 576 steps / 25 forwards
    .venv/bin/python benchmarks/bench_paper_scale.py --no-stages     # the decode comparison alone
    .venv/bin/python benchmarks/bench_paper_scale.py --no-stages --lm-size tiny  # its code path in seconds

Nothing is downloaded: every model is built from its published config values, in code, with random
weights (speed does not depend on the values). On the CPU the script runs a REDUCED number of LM steps
and UNet forwards and extrapolates: an LM step is timed just after the text prompt and with 576 more
positions in the KV cache (random keys and values), and a frame's 576 steps are taken as 576 times their
mean (attention cost grows linearly along the frame); the UNet's time is one (or two) forwards times 25.
Where CUDA is available it runs on the GPU in float16, records the GPU's name and, by default, runs the
full counts (no extrapolation). Models are built one at a time and freed, so the peak is the largest
model (the LM: about 6.6 GB in float32) plus its activations; the decode comparison adds its caches (the
static one 0.5 GB at batch 1, 1 GB at batch 2 in float32) and torch.compile's working memory, and prints the
process's peak resident memory. The Janus LM's own image head has 16,384 entries rather than the 102,400 of
its text head used here, so the ARM figure is slightly pessimistic.
"""
from __future__ import annotations

import argparse
import gc
import resource
import time

import torch

from _common import print_machine, stats, sync, time_repeats, write_results
from acdc_lib.backends.arms import _TransformersARM

IMAGE_TOKENS = 576  # 24 x 24 tokens of a 384 px Janus frame
PROMPT_TOKENS = 32
NUM_INFERENCE_STEPS, STRENGTH, CFG = 50, 0.5, 7.5
UNET_CALLS = int(NUM_INFERENCE_STEPS * STRENGTH)  # 25
SD_SIZE = 512
JANUS_CFG = 5.0  # JanusARM's default guidance (DeepSeek's cfg_weight)
DECODE_AT = PROMPT_TOKENS + IMAGE_TOKENS // 2  # 320 positions cached: mid-frame, the frame's mean step time
DECODE_CACHE = PROMPT_TOKENS + IMAGE_TOKENS  # 608: the StaticCache the compiled ARM allocates for this frame
DECODE_WARMUP = 2  # untimed steps after the first (eager) or the compiling call (compiled)


# ------------------------------------------------------------------------------------------
# The architectures, from their published configs
# ------------------------------------------------------------------------------------------
def sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
        downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False)


def sd15_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, act_fn="silu", sample_size=SD_SIZE, scaling_factor=0.18215)


def sd15_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))


def janus_sized_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=16384, tie_word_embeddings=False))


def tiny_lm():
    """The same architecture at about two million parameters: checks the code paths in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=16384, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=16384, tie_word_embeddings=False))


LM_SIZES = {"janus-pro-1b": janus_sized_lm, "tiny": tiny_lm}


def build(fn, device, dtype):
    t0 = time.perf_counter()
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target precision: no cast (diffusers warns on each)
    try:
        with torch.device(device):
            model = fn()
    finally:
        torch.set_default_dtype(default)
    model = (model if model.dtype == dtype else model.to(dtype)).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"  built {type(model).__name__} ({n / 1e6:.0f} M parameters) in {time.perf_counter() - t0:.1f} s")
    return model, n


def collect() -> None:
    """Free the model a stage built (its function has returned) before the next one is built."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def med(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


# ------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def bench_arm(batch: int, device, dtype, steps: int, full: bool, runs: int, lm_fn=janus_sized_lm) -> dict:
    """Seconds of one frame's 576 tokens for `batch` stories (LM batch 2 x batch under CFG)."""
    from transformers import DynamicCache

    lm, n_params = build(lm_fn, device, dtype)
    cfg = lm.config
    rows = 2 * batch  # CFG: conditional and unconditional rows in one batch
    gen = torch.Generator(device=device).manual_seed(0)
    prompt = torch.randint(0, 16384, (rows, PROMPT_TOKENS), device=device, generator=gen)

    def prefill():
        return lm(input_ids=prompt, use_cache=True)

    def decode(cache, n: int):
        """n sampled tokens (CFG combine + multinomial), each fed back with the KV cache."""
        tok = torch.randint(0, 16384, (rows, 1), device=device, generator=gen)
        for _ in range(n):
            logits = lm(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1].float()
            cond, uncond = logits[:batch], logits[batch:]
            probs = (uncond + CFG * (cond - uncond)).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            tok = torch.cat([nxt, nxt])

    def cache_of(length: int):
        """A KV cache holding `length` positions of random keys and values (the values do not matter for speed)."""
        cache = DynamicCache(config=cfg)
        hd = cfg.hidden_size // cfg.num_attention_heads
        for layer in range(cfg.num_hidden_layers):
            k = torch.randn(rows, cfg.num_key_value_heads, length, hd, device=device, dtype=dtype, generator=gen)
            cache.update(k, k.clone(), layer)
        return cache

    prefill()  # warm-up
    t_prefill = time_repeats(prefill, runs, device)
    res = {"lm_parameters": n_params, "lm_batch": rows, "prompt_tokens": PROMPT_TOKENS}
    if full:
        def frame():
            decode(prefill().past_key_values, IMAGE_TOKENS)
        t = time_repeats(frame, runs, device)
        res.update(mode="full", prefill_s=med(t_prefill), frame_s=med(t), steps_timed=IMAGE_TOKENS)
        res["per_frame_s"] = med(t)  # prefill included
    else:
        def steps_at(length: int) -> float:
            cache = cache_of(length)
            decode(cache, 1)  # warm-up at this length
            return med(time_repeats(lambda: decode(cache, steps), runs, device)) / steps
        s_start = steps_at(PROMPT_TOKENS)
        s_end = steps_at(PROMPT_TOKENS + IMAGE_TOKENS)
        per_step = 0.5 * (s_start + s_end)
        res.update(mode="extrapolated", prefill_s=med(t_prefill), step_s_at_prompt=s_start,
                   step_s_after_576=s_end, steps_timed=2 * steps * runs,
                   per_frame_s=med(t_prefill) + IMAGE_TOKENS * per_step)
    return res


@torch.no_grad()
def bench_vae(batch: int, device, dtype, runs: int, warm: bool) -> dict:
    vae, n = build(sd15_vae, device, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    img = torch.rand(batch, 3, SD_SIZE, SD_SIZE, device=device, dtype=dtype, generator=gen) * 2 - 1
    lat = torch.randn(batch, 4, SD_SIZE // 8, SD_SIZE // 8, device=device, dtype=dtype, generator=gen)
    if warm:
        vae.encode(img).latent_dist.sample(gen)
        vae.decode(lat).sample
    else:  # a cheap warm-up at a quarter of the size (first-call set-up, not the timed shapes)
        vae.encode(img[..., : SD_SIZE // 2, : SD_SIZE // 2])
        vae.decode(lat[..., : SD_SIZE // 16, : SD_SIZE // 16])
    t_enc = time_repeats(lambda: vae.encode(img).latent_dist.sample(gen), runs, device)
    t_dec = time_repeats(lambda: vae.decode(lat).sample, runs, device)
    return {"vae_parameters": n, "encode_s": med(t_enc), "decode_s": med(t_dec)}


@torch.no_grad()
def bench_text(batch: int, device, dtype, runs: int) -> dict:
    te, n = build(sd15_text_encoder, device, dtype)
    ids = torch.randint(0, 49408, (batch, 77), device=device)
    empty = torch.randint(0, 49408, (1, 77), device=device)

    def encode():
        te(ids)[0]
        te(empty)[0]
    encode()
    t = time_repeats(encode, max(runs, 3), device)
    return {"text_encoder_parameters": n, "encode_s": med(t)}


@torch.no_grad()
def bench_unet(batch: int, device, dtype, calls: int, runs: int, warm: bool) -> dict:
    unet, n = build(sd15_unet, device, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    rows = 2 * batch  # CFG: one forward of the conditional and unconditional halves
    x = torch.randn(rows, 4, 64, 64, device=device, dtype=dtype, generator=gen)
    emb = torch.randn(rows, 77, 768, device=device, dtype=dtype, generator=gen)
    t = torch.tensor(500, device=device)
    if warm:
        unet(x, t, encoder_hidden_states=emb)
    else:  # cheap warm-up at a quarter of the latent area
        unet(x[..., :32, :32], t, encoder_hidden_states=emb)

    def forwards():
        for _ in range(calls):
            unet(x, t, encoder_hidden_states=emb)
    per_call = med(time_repeats(forwards, runs, device)) / calls
    return {"unet_parameters": n, "unet_batch": rows, "calls_timed": calls * runs, "forward_s": per_call,
            "per_frame_s": UNET_CALLS * per_call, "mode": "full" if calls == UNET_CALLS else "extrapolated"}


# ------------------------------------------------------------------------------------------
# The ARM's decode step, eager against compiled
# ------------------------------------------------------------------------------------------
class CausalLMARM(_TransformersARM):
    """The real ARMs' sampling code over a bare causal LM: no VQ, no tokenizer, codes are the LM's token ids.

    Only what Emu3ARM and JanusARM implement per model is written here (`_forward`, as Emu3ARM's with every
    vocabulary entry drawable; `_next_inputs`); CFG, temperature, top-k, the per-row draw, the eager step and
    the compiled step are `_TransformersARM`'s own.
    """

    def __init__(self, lm, device, dtype):
        super().__init__(lm, None, temperature=1.0, top_k=None, guidance_scale=JANUS_CFG,
                         first_frame_guidance_scale=None, first_frame_top_k=None, prompt_template="{}",
                         device=device, dtype=dtype, compile=True)
        self.codebook_size = lm.config.vocab_size

    def _vq(self):
        return None  # no VQ: the constructor casts the whole LM to `dtype`

    def _forward(self, inputs, mask, pos, past, cache_position=None):
        res = self.model(input_ids=inputs, attention_mask=mask, position_ids=pos, past_key_values=past,
                         use_cache=True, logits_to_keep=1, cache_position=cache_position)
        return res.logits[:, -1], res.past_key_values                          # (R, V)

    def _next_inputs(self, codes, k, copies):
        return codes.repeat(copies)[:, None]                                    # (R, 1)


def filled_cache(cache, cfg, rows: int, device, dtype):
    """`cache` holding DECODE_AT positions of random keys and values (seeded: both paths get the same ones)."""
    gen = torch.Generator(device=device).manual_seed(1)
    shape = (rows, cfg.num_key_value_heads, DECODE_AT, cfg.hidden_size // cfg.num_attention_heads)
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(shape, device=device, dtype=dtype, generator=gen)
        cache.update(k, torch.randn(shape, device=device, dtype=dtype, generator=gen), layer)
    return cache


@torch.no_grad()
def decode_run(arm: CausalLMARM, batch: int, compiled: bool, steps: int) -> tuple[list[float], torch.Tensor]:
    """Seconds of each of 1 + DECODE_WARMUP + `steps` CFG decode steps from DECODE_AT cached positions, and the
    (batch, steps) codes they drew; story b draws from a generator seeded b."""
    from transformers import DynamicCache, StaticCache

    R, n, dev = 2 * batch, 1 + DECODE_WARMUP + steps, arm.device
    cfg = arm.model.config
    gens = [torch.Generator(device=dev).manual_seed(b) for b in range(batch)]
    out = torch.empty(batch, n, dtype=torch.long, device=dev)
    inputs = arm._next_inputs(torch.arange(batch, device=dev), -1, 2)          # (R, 1)
    if compiled:  # as _sample_compiled: the mask covers the whole static cache (later keys are causal)
        past = filled_cache(StaticCache(config=cfg, max_cache_len=DECODE_CACHE), cfg, R, dev, arm.dtype)
        full = torch.ones(R, DECODE_CACHE, dtype=torch.long, device=dev)
        step = arm._compiled_step()
    else:  # as _sample: the mask grows by the new position each step
        past = filled_cache(DynamicCache(config=cfg), cfg, R, dev, arm.dtype)
        mask = torch.ones(R, DECODE_AT, dtype=torch.long, device=dev)
    times = []
    for k in range(n):
        cur = DECODE_AT + k
        sync(dev)
        t0 = time.perf_counter()
        pos = torch.full((R, 1), cur, device=dev)                               # (R, 1)
        if compiled:
            out[:, k] = step(inputs, full, pos, torch.arange(cur, cur + 1, device=dev), past,
                             arm._uniforms(gens), arm.guidance_scale, arm.top_k)
        else:
            mask = torch.cat([mask, mask.new_ones(R, 1)], dim=1)                # (R, cur + 1)
            logits, past = arm._forward(inputs, mask, pos, past)                # (R, V)
            out[:, k] = arm._pick(logits, arm.guidance_scale, arm.top_k, gens)
        inputs = arm._next_inputs(out[:, k], k, 2)
        sync(dev)
        times.append(time.perf_counter() - t0)
    return times, out[:, 1 + DECODE_WARMUP:]


def peak_rss_gb() -> dict:
    """Peak resident memory so far of this process and of its largest child (torch.compile's workers), in GB."""
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "largest_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20}


def bench_decode(batches: list[int], device, lm_fn, steps: int) -> dict:
    """Per-token seconds of the ARMs' eager and compiled CFG decode steps at each batch; the compile apart."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the real ARMs' default dtype
    lm, n_params = build(lm_fn, device, dtype)
    arm = CausalLMARM(lm, device, dtype)
    print(f"  {dtype}, CFG {JANUS_CFG:g} as a doubled batch, {DECODE_AT} positions cached of a "
          f"{DECODE_CACHE}-position frame; {DECODE_WARMUP} warm-up and {steps} timed steps per path")
    res = {"lm_parameters": n_params, "dtype": dtype, "positions_cached": DECODE_AT,
           "static_cache_len": DECODE_CACHE, "guidance_scale": JANUS_CFG, "warmup_steps": DECODE_WARMUP,
           "steps_timed": steps, "by_batch": {}}
    for b in batches:
        torch._dynamo.reset()  # each batch compiles as a process's first call would (static shapes)
        t_eager, codes_eager = decode_run(arm, b, False, steps)
        gc.collect()
        t_comp, codes_comp = decode_run(arm, b, True, steps)
        gc.collect()
        e, c = stats(t_eager[1 + DECODE_WARMUP:]), stats(t_comp[1 + DECODE_WARMUP:])
        same = int((codes_eager == codes_comp).sum())
        r = {"lm_rows": 2 * b, "eager_s": e, "compiled_s": c, "compile_s": t_comp[0],
             "eager_first_step_s": t_eager[0], "warmup_s": {"eager": t_eager[1:1 + DECODE_WARMUP],
                                                           "compiled": t_comp[1:1 + DECODE_WARMUP]},
             "compiled_over_eager": c["median"] / e["median"], "same_codes": same, "draws": codes_eager.numel()}
        res["by_batch"][str(b)] = r
        print(f"  batch {b} ({2 * b} LM rows): eager {1e3 * e['median']:.1f} ms per token (best "
              f"{1e3 * e['best']:.1f}), compiled {1e3 * c['median']:.1f} ms (best {1e3 * c['best']:.1f}); "
              f"compiled / eager time per token: {r['compiled_over_eager']:.2f} (informational, no target on "
              f"{device.type.upper()})")
        print(f"    compile: {r['compile_s']:.1f} s (the first call, one step included; excluded above); warm-up "
              f"steps eager {', '.join(f'{1e3 * x:.0f}' for x in r['warmup_s']['eager'])} ms, compiled "
              f"{', '.join(f'{1e3 * x:.0f}' for x in r['warmup_s']['compiled'])} ms; same codes as eager: "
              f"{same} of {r['draws']} draws")
    res["peak_rss_gb"] = peak_rss_gb()
    print(f"  peak resident memory: {res['peak_rss_gb']['self']:.2f} GB (this process), "
          f"{res['peak_rss_gb']['largest_child']:.2f} GB (its largest child process)")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action=argparse.BooleanOptionalAction, default=True,
                   help="batch 1 and the fewest timed runs (default); --no-quick: batch 1 and 2, two runs each")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="stories per batch (overrides --quick's)")
    p.add_argument("--full-counts", action=argparse.BooleanOptionalAction, default=None,
                   help="run all 576 LM steps and 25 UNet forwards (default: on CUDA only)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda where available)")
    p.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                   help="time the per-frame stages (default); --no-stages: only the decode comparison")
    p.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True,
                   help="time the ARMs' eager against their compiled decode step (default); --no-decode: skip it")
    p.add_argument("--decode-batches", type=int, nargs="+", default=[1, 2], help="stories per batch, decode")
    p.add_argument("--decode-steps", type=int, default=12, help="timed decode steps per path and batch")
    p.add_argument("--lm-size", choices=list(LM_SIZES), default="janus-pro-1b",
                   help="the LM of the ARM stage and the decode comparison; tiny: check the code paths quickly")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not (args.stages or args.decode):
        p.error("--no-stages and --no-decode leave nothing to measure")
    if args.decode_steps < 1 or min(args.decode_batches) < 1:
        p.error(f"--decode-steps and --decode-batches must be >= 1, got {args.decode_steps} and "
                f"{args.decode_batches}")
    if DECODE_AT + 1 + DECODE_WARMUP + args.decode_steps > DECODE_CACHE:
        p.error(f"--decode-steps must be at most {DECODE_CACHE - DECODE_AT - 1 - DECODE_WARMUP} (the static cache "
                f"holds {DECODE_CACHE} positions, {DECODE_AT} of them filled), got {args.decode_steps}")
    lm_fn = LM_SIZES[args.lm_size]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    full = args.full_counts if args.full_counts is not None else device.type == "cuda"
    batches = args.batches or ([1] if args.quick else [1, 2])
    runs = 1 if args.quick and device.type == "cpu" else (2 if device.type == "cpu" else 5)
    lm_steps = IMAGE_TOKENS if full else (3 if args.quick else 8)
    unet_calls = UNET_CALLS if full else (1 if args.quick else 2)
    info = print_machine()
    if args.lm_size != "janus-pro-1b":
        print(f"LM: {args.lm_size} (a check of the code paths: its times say nothing about the paper's scale)")
    if args.stages:
        print(f"device {device} ({info.get('gpu', 'CPU')}), {dtype}; "
              + ("FULL counts: 576 LM steps and 25 UNet forwards per frame are run" if full else
                 f"REDUCED counts, extrapolated: {lm_steps} LM steps at the start and at the end of a frame's 576, "
                 f"{unet_calls} UNet forward(s) of the 25") + f"; {runs} timed run(s) of each part")

    per_batch = {}
    for b in batches if args.stages else []:
        print(f"\nbatch {b} (CFG doubles the LM's and the UNet's batch to {2 * b}):")
        arm = bench_arm(b, device, dtype, lm_steps if not full else IMAGE_TOKENS, full, runs, lm_fn)
        collect()
        vae = bench_vae(b, device, dtype, runs, warm=not (args.quick and device.type == "cpu"))
        collect()
        text = bench_text(b, device, dtype, runs)
        collect()
        unet = bench_unet(b, device, dtype, unet_calls, runs, warm=not (args.quick and device.type == "cpu"))
        collect()
        stages = {
            "ARM tokens (576, CFG)": arm["per_frame_s"],
            "decode (VAE decoder at 512, stand-in for the ARM's D)": vae["decode_s"],
            "SDEdit: text encoder (prompt + empty prompt)": text["encode_s"],
            "SDEdit: VAE encode": vae["encode_s"],
            f"SDEdit: {UNET_CALLS} UNet forwards (CFG batch {2 * b})": unet["per_frame_s"],
            "SDEdit: VAE decode": vae["decode_s"],
            "re-encode (VAE encoder at 512, stand-in for the ARM's E)": vae["encode_s"],
        }
        total = sum(stages.values())
        if arm["mode"] == "extrapolated":
            print(f"  ARM: prefill {arm['prefill_s']:.3f} s, a step {arm['step_s_at_prompt'] * 1e3:.1f} ms after the "
                  f"prompt and {arm['step_s_after_576'] * 1e3:.1f} ms after 576 more positions -> 576 steps "
                  f"extrapolated")
        if unet["mode"] == "extrapolated":
            print(f"  UNet: {unet['forward_s']:.2f} s per forward of batch {unet['unet_batch']} -> x {UNET_CALLS} "
                  f"extrapolated")
        print(f"  per-frame seconds per stage ({'measured' if full else 'extrapolated where marked above'}), "
              f"batch {b}:")
        for k, v in stages.items():
            print(f"    {k:58s} {v:9.3f} s  {100 * v / total:5.1f} %")
        sdedit = sum(v for k, v in stages.items() if k.startswith("SDEdit"))
        print(f"    {'total per frame step (all ' + str(b) + ' stories)':58s} {total:9.3f} s; "
              f"{total / b:.3f} s per story-frame; SDEdit {100 * sdedit / total:.1f} %, ARM "
              f"{100 * stages['ARM tokens (576, CFG)'] / total:.1f} %")
        per_batch[str(b)] = {"stages_s": stages, "total_s": total, "per_story_frame_s": total / b,
                             "arm": arm, "vae": vae, "text": text, "unet": unet}
    decode = None
    if args.decode:
        print(f"\nthe ARMs' decode step on {device}, eager (DynamicCache) against compiled (StaticCache + "
              f"torch.compile), batches {args.decode_batches}:")
        decode = bench_decode(args.decode_batches, device, lm_fn, args.decode_steps)
        collect()
    write_results("bench_paper_scale", {
        "machine": info, "device": str(device), "dtype": str(dtype), "full_counts": full, "quick": args.quick,
        "lm_steps_timed_per_point": lm_steps, "unet_calls_timed": unet_calls, "runs": runs,
        "settings": {"num_inference_steps": NUM_INFERENCE_STEPS, "strength": STRENGTH, "guidance_scale": CFG,
                     "unet_calls_per_frame": UNET_CALLS, "image_tokens": IMAGE_TOKENS, "sd_size": SD_SIZE},
        "by_batch": per_batch, "lm_size": args.lm_size, "decode": decode,
    }, args.out)


if __name__ == "__main__":
    main()
