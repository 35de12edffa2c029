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

    .venv/bin/python benchmarks/bench_paper_scale.py            # --quick (default): batch 1, fewest runs
    .venv/bin/python benchmarks/bench_paper_scale.py --no-quick # batch 1 and 2, two timed runs of each part
    .venv/bin/python benchmarks/bench_paper_scale.py --full-counts   # run all 576 steps / 25 forwards

Nothing is downloaded: every model is built from its published config values, in code, with random
weights (speed does not depend on the values). On the CPU the script runs a REDUCED number of LM steps
and UNet forwards and extrapolates: an LM step is timed just after the text prompt and with 576 more
positions in the KV cache (random keys and values), and a frame's 576 steps are taken as 576 times their
mean (attention cost grows linearly along the frame); the UNet's time is one (or two) forwards times 25.
Where CUDA is available it runs on the GPU in float16, records the GPU's name and, by default, runs the
full counts (no extrapolation). Models are built one at a time and freed, so the peak is the largest
model (the LM: about 6.6 GB in float32) plus its activations. The Janus LM's own image head has 16,384
entries rather than the 102,400 of its text head used here, so the ARM figure is slightly pessimistic.
"""
from __future__ import annotations

import argparse
import gc
import time

import torch

from _common import print_machine, time_repeats, write_results

IMAGE_TOKENS = 576  # 24 x 24 tokens of a 384 px Janus frame
PROMPT_TOKENS = 32
NUM_INFERENCE_STEPS, STRENGTH, CFG = 50, 0.5, 7.5
UNET_CALLS = int(NUM_INFERENCE_STEPS * STRENGTH)  # 25
SD_SIZE = 512


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
def bench_arm(batch: int, device, dtype, steps: int, full: bool, runs: int) -> dict:
    """Seconds of one frame's 576 tokens for `batch` stories (LM batch 2 x batch under CFG)."""
    from transformers import DynamicCache

    lm, n_params = build(janus_sized_lm, device, dtype)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action=argparse.BooleanOptionalAction, default=True,
                   help="batch 1 and the fewest timed runs (default); --no-quick: batch 1 and 2, two runs each")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="stories per batch (overrides --quick's)")
    p.add_argument("--full-counts", action=argparse.BooleanOptionalAction, default=None,
                   help="run all 576 LM steps and 25 UNet forwards (default: on CUDA only)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda where available)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
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
    print(f"device {device} ({info.get('gpu', 'CPU')}), {dtype}; "
          + ("FULL counts: 576 LM steps and 25 UNet forwards per frame are run" if full else
             f"REDUCED counts, extrapolated: {lm_steps} LM steps at the start and at the end of a frame's 576, "
             f"{unet_calls} UNet forward(s) of the 25") + f"; {runs} timed run(s) of each part")

    per_batch = {}
    for b in batches:
        print(f"\nbatch {b} (CFG doubles the LM's and the UNet's batch to {2 * b}):")
        arm = bench_arm(b, device, dtype, lm_steps if not full else IMAGE_TOKENS, full, runs)
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
    write_results("bench_paper_scale", {
        "machine": info, "device": str(device), "dtype": str(dtype), "full_counts": full, "quick": args.quick,
        "lm_steps_timed_per_point": lm_steps, "unet_calls_timed": unet_calls, "runs": runs,
        "settings": {"num_inference_steps": NUM_INFERENCE_STEPS, "strength": STRENGTH, "guidance_scale": CFG,
                     "unet_calls_per_frame": UNET_CALLS, "image_tokens": IMAGE_TOKENS, "sd_size": SD_SIZE},
        "by_batch": per_batch,
    }, args.out)


if __name__ == "__main__":
    main()
