"""Toy-world models: tokenizer, ARM protocol and sampling, DM through UNetCorrector, training steps,
and the shipped checkpoints loaded with from_pretrained."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from acdc_lib.toyworld import models as M
from acdc_lib.toyworld import train as T
from acdc_lib.toyworld.grammar import generate_stories
from acdc_lib.toyworld.text import UNK, build_tokenizer, load_tokenizer, split_words, vocabulary
from acdc_lib.toyworld.world import SceneState, explicit_caption


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny_vq():
    torch.manual_seed(0)
    return M.build_vq(codebook_size=32, channels=(16, 16, 16), embed_dim=4).eval()


@pytest.fixture(scope="module")
def tiny_arm(tok, tiny_vq):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    layout = M.ARMLayout(n_text=len(tok), codebook_size=32)
    lm = LlamaForCausalLM(M.arm_config(layout.vocab_size, hidden=32, layers=1, heads=2))
    return M.ToyARM(lm, tiny_vq, tok, layout)


# ---- tokenizer ---------------------------------------------------------------------------
def test_tokenizer_round_trip_and_unknown_words(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    text = "Max the corgi sits in the snowy field at night."
    ids = again(text).input_ids
    assert ids == tok(text).input_ids
    assert again.decode(ids, skip_special_tokens=True).split() == split_words(text)
    assert again("").input_ids == [tok.bos_token_id, tok.eos_token_id]  # CFG's unconditional prompt
    zorg = again("Zorg the corgi").input_ids
    assert zorg[1] == tok.convert_tokens_to_ids(UNK) and zorg[3] == tok.convert_tokens_to_ids("corgi")


def test_every_grammar_sentence_and_caption_is_in_vocabulary(tok):
    unk = tok.convert_tokens_to_ids(UNK)
    stories = generate_stories(60, seed=7)
    texts = [s for st in stories for s in st.sentences]
    texts += [explicit_caption(SceneState.from_dict(d)) for st in stories for d in st.states]
    assert all(unk not in tok(t).input_ids for t in texts)
    assert max(len(tok(t).input_ids) for t in texts) <= M.TEXT_LEN
    assert vocabulary() == vocabulary(50)  # the word list does not depend on the scan size


# ---- data --------------------------------------------------------------------------------
def test_random_states_are_seeded_and_can_be_physically_wrong():
    a = T.random_states(200, np.random.default_rng(3), p_wrong_counts=0.5)
    b = T.random_states(200, np.random.default_rng(3), p_wrong_counts=0.5)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    wrong = sum(not s.is_physically_valid for s in a)
    assert 50 < wrong < 150  # about half had one count changed (some draws keep the normal value)
    assert all(s.is_physically_valid for s in T.random_states(50, np.random.default_rng(3)))


# ---- ARM ---------------------------------------------------------------------------------
def test_arm_layout_and_context(tok, tiny_arm):
    lay = tiny_arm.layout
    texts = [["Max the fox sat in the park.", "He ran."]]
    prev = torch.randint(0, 32, (1, 1, 64))
    ids = tiny_arm.context_ids(texts, prev)[0]
    assert ids.shape[0] == lay.segment + lay.text_len + 1
    assert ids[lay.text_len] == lay.boi and ids[lay.segment - 1] == lay.eoi and ids[-1] == lay.boi
    assert torch.equal(ids[lay.text_len + 1:lay.segment - 1], prev[0, 0] + lay.code_offset)
    with pytest.raises(ValueError, match="at most"):
        tiny_arm.context_ids([[" and".join(["the fox"] * 20)]], torch.zeros(1, 0, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="sentences"):
        tiny_arm.context_ids([["one", "two", "three"]], prev)


def test_arm_sampling_shapes_and_batch_independence(tiny_arm):
    texts = [["Luna the owl stood on the beach at night.", "She jumped."],
             ["Max the pig sat in the garden.", "The pig ran."],
             ["Coco the cat ran in the forest.", "Then she sat."]]
    prev = torch.randint(0, 32, (3, 1, 64), generator=torch.Generator().manual_seed(1))
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = tiny_arm.generate(texts, prev, gens([10, 11, 12]))
    assert batch.shape == (3, 64) and batch.dtype == torch.long
    assert 0 <= int(batch.min()) and int(batch.max()) < 32
    alone = tiny_arm.generate(texts[1:2], prev[1:2], gens([11]))
    assert torch.equal(alone[0], batch[1])
    other_seed = tiny_arm.generate(texts[1:2], prev[1:2], gens([99]))
    assert not torch.equal(other_seed[0], batch[1])
    img = tiny_arm.decode(batch)
    assert img.shape == (3, 3, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert tiny_arm.encode(img).shape == (3, 64)


def test_a_context_window_runs_stories_longer_than_the_positions(tok, tiny_arm):
    K = 3
    windowed = M.ToyARM(tiny_arm.lm, tiny_arm.vq, tok, tiny_arm.layout, context_frames=K)
    sentences = ["Luna the owl stood on the beach at night.", "She jumped.", "Then she sat.", "She ran."] * 2
    prev = torch.randint(0, 32, (1, 7, 64), generator=torch.Generator().manual_seed(2))
    gens = lambda: [torch.Generator().manual_seed(5)]  # noqa: E731
    # within the window it is the full-context ARM; beyond it, the last K - 1 frames and K sentences
    assert torch.equal(windowed.generate([sentences[:2]], prev[:, :1], gens()),
                       tiny_arm.generate([sentences[:2]], prev[:, :1], gens()))
    assert torch.equal(windowed.generate([sentences], prev, gens()),
                       tiny_arm.generate([sentences[-K:]], prev[:, -(K - 1):], gens()))
    max_frames = tiny_arm.lm.config.max_position_embeddings // tiny_arm.layout.segment
    with pytest.raises(ValueError, match="exceeds the ARM's .* positions; pass context_frames"):
        tiny_arm.generate([sentences], prev, gens())
    for bad in (0, max_frames + 1, True, 2.0):
        with pytest.raises(ValueError, match=rf"context_frames must be None or an int in \[1, {max_frames}\]"):
            M.ToyARM(tiny_arm.lm, tiny_arm.vq, tok, tiny_arm.layout, context_frames=bad)


def test_a_video_prompt_conditions_every_frame_and_run_video_runs(tok, tiny_arm):
    from acdc_lib.loop import run_video

    prompt = "Luna the owl runs on the beach at night."
    prev = torch.randint(0, 32, (1, 2, 64), generator=torch.Generator().manual_seed(3))
    gens = lambda: [torch.Generator().manual_seed(4)]  # noqa: E731
    assert torch.equal(tiny_arm.generate([[prompt]], prev, gens()), tiny_arm.generate([[prompt] * 3], prev, gens()))
    out = run_video([prompt, "Max the pig sits in the garden."], tiny_arm, None, num_frames=4, chunk_length=2,
                    correct_chunks="none", seeds=[0, 1])
    assert len(out.videos) == 2 and out.videos[0].final_frames.shape == (4, 3, 32, 32)


def test_arm_and_dm_run_through_the_loop(tok, tiny_arm, tiny_vq, tmp_path):
    from acdc_lib.loop import run_stories
    from acdc_lib.sdedit import UNetCorrector
    from acdc_lib.types import ARM, LoopConfig

    torch.manual_seed(0)
    unet, te, sched = M.build_dm(len(tok), latent_channels=4, channels=(16, 32), text_hidden=32, text_layers=1)
    for name, part in (("unet", unet), ("text_encoder", te), ("tokenizer", tok), ("scheduler", sched),
                       ("vae", tiny_vq)):
        part.save_pretrained(tmp_path / name)
    corrector = UNetCorrector.from_pretrained(tmp_path)
    assert isinstance(tiny_arm, ARM)
    stories = generate_stories(2, seed=3, n_sentences=3)
    out = run_stories(stories, tiny_arm, corrector, None,
                      LoopConfig(correct_frames="all", strength=0.5, num_inference_steps=4), seeds=[0, 1])
    assert len(out.stories) == 2 and len(out.stories[0].frames) == 3
    f = out.stories[1].frames[2]
    assert f.corrected and f.steps_run == 2 and f.corrected_image.shape == (3, 32, 32)
    assert f.context_tokens.shape == (64,)
    assert torch.equal(f.context_tokens, tiny_arm.encode(f.corrected_image[None])[0])


# ---- training steps (tiny, so the retraining code runs in the tests) ---------------------
def _falls(losses, k=5):
    return float(np.mean(losses[-k:])) < float(np.mean(losses[:k]))


def test_probe_and_clip_training_reduce_loss(tok):
    torch.set_num_threads(1)
    _, pl = T.train_probe(T.TrainConfig(steps=40, batch_size=16, lr=2e-3, seed=0, warmup=5), verbose=False)
    assert _falls(pl)
    _, cl = T.train_clip(tok, T.TrainConfig(steps=30, batch_size=16, lr=2e-3, seed=0, warmup=5), verbose=False)
    assert _falls(cl)


def test_vq_dm_arm_training_reduce_loss():
    cfg = lambda steps, lr, **extra: T.TrainConfig(steps=steps, batch_size=8, lr=lr, seed=0, warmup=3,  # noqa: E731
                                                   extra=extra)
    vq, vl = T.train_vq(cfg(25, 3e-3, codebook_size=32, channels=(16, 16, 16), embed_dim=4, restart_every=10),
                        verbose=False)
    assert _falls(vl)
    assert vq.config.scaling_factor != 0.18215  # set to the latents' 1/std for the DM
    _, dl = T.train_dm(vq, cfg(25, 2e-3, channels=(16, 32), snr_gamma=5.0), verbose=False)  # Min-SNR, as shipped
    assert _falls(dl)
    stories = generate_stories(4, seed=11, n_sentences=2)
    arm, al = T.train_arm(stories, vq, cfg(25, 3e-3, hidden=32, layers=1), verbose=False)
    assert _falls(al)
    assert arm.tokens_per_frame == 64


def test_parallel_training_logs_every_task_and_the_run(tmp_path):
    # Two real child processes, a few steps each: both records and the run's wall time are logged
    # (the log's lock keeps concurrent writers from losing one another's records).
    wall = T.run_parallel(["probe", "clip"], tmp_path, jobs=2, forwarded=["--steps-scale=0.002"], poll_s=0.2)
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert {"evaluator_probe", "evaluator_clip", "all"} <= set(log)
    assert log["evaluator_probe"]["config"]["steps"] == round(T.DEFAULTS["probe"].steps * 0.002)
    assert log["evaluator_probe"]["torch_threads"] == 1
    assert log["all"]["config"]["extra"] == {"jobs": 2, "tasks": ["probe", "clip"]} and wall > 0
    assert (tmp_path / "evaluator" / "probe").is_dir() and (tmp_path / "evaluator" / "clip").is_dir()
    # a later run of fewer tasks is logged beside the first run's record, which keeps its tasks and wall time
    T.run_parallel(["probe"], tmp_path, jobs=2, forwarded=["--steps-scale=0.002"], poll_s=0.2)
    again = json.loads((tmp_path / "train_log.json").read_text())
    assert again["all"] == log["all"]
    assert again["all_probe"]["config"]["extra"] == {"jobs": 2, "tasks": ["probe"]}


def test_parallel_training_stops_on_a_failed_task(tmp_path):
    # The DM reads the VQ's checkpoint; with no VQ in `out` its child fails and the run says which task.
    with pytest.raises(RuntimeError, match="'dm' failed"):
        T.run_parallel(["dm"], tmp_path, jobs=2, forwarded=["--steps-scale=0.002"], poll_s=0.2)


def test_arm_family_refuses_a_weak_step_it_would_not_keep(tmp_path):
    cfg = T.TrainConfig(steps=500, batch_size=2, lr=1e-3, seed=0, extra={"snapshots": [300, 600], "weak_step": 600})
    with pytest.raises(ValueError, match="weak_step 600 is not among the snapshots kept in 500 steps"):
        T.train_arm_family(tmp_path, cfg)


def test_arm_frame_nll_is_the_lm_loss_and_swapping_reaches_only_later_frames(tiny_arm):
    from acdc_lib.toyworld.gates import arm_frame_nll

    stories = T.load_split("train")[:3]
    plain = arm_frame_nll(tiny_arm, stories, batch_size=2)
    swapped = arm_frame_nll(tiny_arm, stories, swap_earlier_frames=True)
    assert len(plain) == len(stories[0].sentences) and all(np.isfinite(plain))
    # frame 1 is the LM's own loss on the first segment's codes; nothing earlier can be swapped
    ids = M.arm_sequences(stories, tiny_arm.vq, tiny_arm.tokenizer, tiny_arm.layout)[:, :tiny_arm.layout.segment]
    with torch.no_grad():
        ref = float(tiny_arm.lm(input_ids=ids, labels=T.image_token_labels(ids, tiny_arm.layout)).loss)
    assert plain[0] == pytest.approx(ref, rel=1e-5) and swapped[0] == pytest.approx(plain[0], rel=1e-6)
    # a random LM attends to everything, so lent frames change its loss on the frames after them
    assert all(abs(a - b) > 1e-6 for a, b in zip(plain[1:], swapped[1:]))
    with pytest.raises(ValueError, match="at least two stories"):
        arm_frame_nll(tiny_arm, stories[:1], swap_earlier_frames=True)


def test_choose_snapshot_prefers_the_widest_pass_else_the_last_step():
    rec = lambda step, value: {"step": step, "value": value, "passed": value >= 1.0}  # noqa: E731
    assert T.choose_snapshot([rec(700, 0.97), rec(1000, 1.02), rec(1400, 1.01)]) == 1000
    # none meets the rule: the smallest miss (700) is not preferred over the best-trained snapshot
    assert T.choose_snapshot([rec(700, 0.975), rec(1000, 0.96), rec(1400, 0.96)]) == 1400
    with pytest.raises(ValueError, match="no snapshot"):
        T.choose_snapshot([])


def test_train_refuses_the_test_split():
    with pytest.raises(ValueError, match="held out"):
        T.load_split("test")


# ---- the shipped checkpoints (acdc_lib/toyworld/checkpoints), loaded with from_pretrained ----
def test_shipped_evaluator_reads_fresh_renders():
    ev = M.load_evaluator()
    states = T.random_states(48, np.random.default_rng(12345))
    x = T.render(states)
    pred, truth = ev.predict(x), M.state_labels(states)
    assert float((pred["species"] == truth["species"]).float().mean()) >= 0.9
    assert float((pred["place"] == truth["place"]).float().mean()) >= 0.9
    f = ev.image_features(x)
    assert f.shape == (48, ev.num_features) and torch.allclose(f.norm(dim=-1), torch.ones(48), atol=1e-5)
    caps = [explicit_caption(s) for s in states]
    sim = f @ ev.text_features(caps).T
    assert float((sim.argmax(1) == torch.arange(48)).float().mean()) >= 0.5  # own caption ranks first mostly


def test_shipped_vq_round_trip():
    vq = M.load_vq()
    x = T.render(T.random_states(16, np.random.default_rng(7)))
    codes = M.vq_encode(vq, x)
    assert codes.shape == (16, M.TOKENS_PER_FRAME) and int(codes.max()) < vq.config.num_vq_embeddings
    rec = M.vq_decode(vq, codes)
    assert rec.shape == x.shape and float((rec - x).pow(2).mean()) < 0.01
    assert float((M.vq_decode(vq, codes[torch.randperm(16)]) - x).pow(2).mean()) > 0.01  # codes carry the frame


def test_shipped_dm_runs_through_unetcorrector():
    dm = M.load_dm()
    gens = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]  # noqa: E731
    prompts = ["Max the fox sits in the meadow during the day.", "Luna the owl runs on the beach at night."]
    img = dm.generate(prompts, num_inference_steps=4, generators=gens())
    assert img.shape == (2, 3, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1
    out = dm.correct(img, prompts, strength=0.5, num_inference_steps=4, generators=gens())
    assert out.shape == img.shape and dm.last_steps_run == 2


def test_shipped_arm_family_is_what_the_training_log_chose():
    log = json.loads((M.CHECKPOINT_DIR / "train_log.json").read_text())["arm"]
    assert log["chosen_step"] == T.choose_snapshot(log["selection"])
    # arm_strong is shipped exactly when the last snapshot is not the chosen one
    assert (M.CHECKPOINT_DIR / "arm_strong").is_dir() == (log["strong_step"] != log["chosen_step"])


@pytest.mark.parametrize("name", ["arm", "arm_weak", "arm_strong"])
def test_shipped_arms_generate_a_first_frame(name):
    if name == "arm_strong" and not (M.CHECKPOINT_DIR / name).is_dir():
        pytest.skip("arm_strong is not shipped when the last snapshot is the chosen arm")
    arm = M.load_arm(M.CHECKPOINT_DIR / name)
    texts = [["Max the fox was sitting in the meadow on a sunny day."], ["Luna, a young owl, ran on the beach under the moon."]]
    tokens = arm.generate(texts, torch.zeros(2, 0, 64, dtype=torch.long), [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert tokens.shape == (2, 64) and int(tokens.max()) < arm.layout.codebook_size
    img = arm.decode(tokens)
    assert img.shape == (2, 3, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1


def test_degrade_blurs_some_frames_and_keeps_range():
    x = T.render(T.random_states(16, np.random.default_rng(0)))
    y = T.degrade(x, np.random.default_rng(1), p_blur=1.0, max_noise=0.0)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    # blur lowers the high frequencies: neighbouring pixels differ less
    tv = lambda im: float((im[..., 1:] - im[..., :-1]).abs().mean())  # noqa: E731
    assert tv(y) < 0.9 * tv(x)
    assert torch.equal(T.degrade(x, np.random.default_rng(1), p_blur=0.0, max_noise=0.0), x)


def test_arm_curve_with_the_true_context_shares_frame_one_and_its_draws(tiny_arm):
    from acdc_lib.toyworld.gates import VISUAL, arm_curve

    class ZeroProbe:  # every attribute predicted as class 0: the curve is then the share of class-0 truths
        def predict(self, images):
            return {k: torch.zeros(len(images), dtype=torch.long) for k in VISUAL}

    stories = T.load_split("train")[:3]
    own = arm_curve(tiny_arm, ZeroProbe(), stories, seed=5, batch_size=2)
    true = arm_curve(tiny_arm, ZeroProbe(), stories, seed=5, batch_size=2, context="true")
    N = len(stories[0].sentences)
    assert own["images"].shape == true["images"].shape == (3, N, 3, 32, 32)
    assert torch.equal(own["images"][:, 0], true["images"][:, 0])          # same text, same draws, no context
    assert not torch.equal(own["images"][:, 1:], true["images"][:, 1:])    # a random LM reads its context
    assert own["correct"]["place"].shape == (3, N) and own["per_frame"] == true["per_frame"]
    with pytest.raises(ValueError, match="context must be 'own' or 'true'"):
        arm_curve(tiny_arm, ZeroProbe(), stories, context="lent")


def test_arm_inheritance_pairs_stories_and_frames_by_hand():
    from acdc_lib.toyworld.gates import VISUAL, arm_inheritance, inheritance_lines

    def curve(rows):  # the same 0/1 rows (stories x frames) for every attribute
        return {"correct": {k: torch.tensor(rows, dtype=torch.bool) for k in VISUAL}}

    # 4 stories, 3 frames. Free-running: stories 0-1 lose the attribute at frame 2 and keep it lost;
    # with the true earlier frames only story 0 loses it at frame 3. Frame 1 is shared, as arm_curve makes it.
    own = curve([[1, 0, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    true = curve([[1, 1, 0], [1, 1, 1], [1, 1, 1], [0, 0, 0]])
    res = arm_inheritance(own, true, n_resamples=200)
    assert set(res) == {*VISUAL, "mean"}
    for k in res:
        assert res[k]["fall"].value == pytest.approx(0.5)             # (1 + 1 + 0 + 0) / 4
        assert res[k]["inherited"].value == pytest.approx(0.375)      # per story over frames 2-3: .5, 1, 0, 0
        assert res[k]["inherited_last"].value == pytest.approx(0.25)  # frame 3: story 1 only
        assert res[k]["inherited"].low <= 0.375 <= res[k]["inherited"].high
    lines = inheritance_lines(res, 3)
    assert len(lines) == len(VISUAL) + 1 and "+0.375 [" in lines[-1] and "frames 2-3" in lines[-1]
    with pytest.raises(ValueError, match="same stories"):
        arm_inheritance(own, curve([[1, 1, 0]]))
    with pytest.raises(ValueError, match="per-story 'correct'"):
        arm_inheritance(own, {"mean": [0.5]})


def test_measure_inheritance_refuses_a_bad_slice():
    from acdc_lib.toyworld.gates import measure_inheritance

    for bad in ("5", "a:b", "10:5", "0:1", "0:100000"):
        with pytest.raises(ValueError, match="START:STOP|START < STOP"):
            measure_inheritance(bad)


def _fake_task(out, task, cfg, finished):
    names, dirs = T.TASK_OUTPUTS[task]
    for d in dirs:
        (out / d).mkdir(parents=True, exist_ok=True)
    path = out / "train_log.json"
    log = json.loads(path.read_text()) if path.exists() else {}
    for n in names:
        log[n] = {"config": T._plain(cfg), "finished": finished}
    path.write_text(json.dumps(log))


def test_a_retrain_resumes_at_the_first_unfinished_or_stale_task(tmp_path):
    cfgs = {t: T.default_config(T.TASK_CONFIG[t]) for t in T.TASKS}
    tasks = ["vq", "dm", "probe", "motion"]
    _fake_task(tmp_path, "vq", cfgs["vq"], 100.0)
    _fake_task(tmp_path, "dm", cfgs["dm"], 200.0)
    _fake_task(tmp_path, "probe", cfgs["probe"], 50.0)  # before the retrain began: stale
    assert T.finished_tasks(tmp_path, tasks, cfgs, since=60.0) == {"vq", "dm"}  # motion never ran
    # The VQ trained again after the DM read it: the DM is stale, and so is what reads the DM.
    _fake_task(tmp_path, "vq", cfgs["vq"], 300.0)
    _fake_task(tmp_path, "motion", cfgs["motion"], 400.0)
    assert T.finished_tasks(tmp_path, tasks, cfgs, since=60.0) == {"vq"}
    # Another config, or a missing checkpoint folder, is not finished either.
    other = {**cfgs, "vq": T.TrainConfig(**{**T.asdict(cfgs["vq"]), "steps": 7})}
    assert T.finished_tasks(tmp_path, tasks, other, since=60.0) == set()
    import shutil

    shutil.rmtree(tmp_path / "vq")
    assert T.finished_tasks(tmp_path, tasks, cfgs, since=60.0) == set()


def test_a_retrain_resumes_at_the_storygpt_task_it_did_not_finish(tmp_path):
    from acdc_lib.toyworld import storygpt

    cfgs = {t: T.default_config(T.TASK_CONFIG[t]) for t in T.TASKS}
    assert cfgs["char_ldm"] is storygpt.DEFAULTS["char_ldm"] and cfgs["vq"] is T.DEFAULTS["vq"]
    tasks = ["vq", "dm", "char_ldm", "aligned_lm", "aligned_lm_text"]
    for k, t in enumerate(["vq", "dm", "char_ldm", "aligned_lm"]):
        _fake_task(tmp_path, t, cfgs[t], 100.0 + k)
    assert T.finished_tasks(tmp_path, tasks, cfgs, since=60.0) == {"vq", "dm", "char_ldm", "aligned_lm"}
    # a Char-LDM fine-tuned again after the LM was aligned to it: every LM aligned to it is stale
    _fake_task(tmp_path, "char_ldm", cfgs["char_ldm"], 200.0)
    _fake_task(tmp_path, "aligned_lm_text", cfgs["aligned_lm_text"], 300.0)
    assert T.finished_tasks(tmp_path, tasks, cfgs, since=60.0) == {"vq", "dm", "char_ldm", "aligned_lm_text"}
    # an aligned LM trained with another config (its target) is not finished
    other = {**cfgs, "aligned_lm_text": cfgs["aligned_lm"]}
    assert "aligned_lm_text" not in T.finished_tasks(tmp_path, tasks, other, since=60.0)


def test_every_task_is_scheduled_after_what_it_reads_and_storygpt_is_in_make_train_toy(tmp_path):
    assert sorted(T.PRIORITY) == sorted(T.TASKS) == sorted(T.TASK_OUTPUTS) == sorted(T.TASK_CONFIG)
    pos = {t: i for i, t in enumerate(T.PRIORITY)}
    assert all(pos[d] < pos[t] for t, (_, deps) in T.TASKS.items() for d in deps)
    # `train all` (make train-toy) trains StoryGPT-V-toy's six models, each as its own task
    assert set(T.STORYGPT_MODELS) <= set(T.MODELS)
    assert {m for t in T.TASKS for m in T.TASKS[t][0]} >= set(T.STORYGPT_MODELS)
    assert T.TASKS["aligned_lm_noreg"][1] == ("char_ldm_noreg", "vq")
    with pytest.raises(ValueError, match="no training config named 'nope'"):
        T.default_config("nope")
    # StoryGPT-V-toy's tasks run its own module (which imports train) and take only the step scale
    cmd = T._task_command(["aligned_lm_text"], tmp_path, ["--steps-scale=0.5", "--arm-steps=9"])
    assert cmd[1:] == ["-m", "acdc_lib.toyworld.storygpt", "aligned_lm_text", "--out", str(tmp_path), "--threads", "1",
                       "--steps-scale=0.5"]
    assert T._task_command(["dm"], tmp_path, ["--arm-steps=9"])[2:4] == ["acdc_lib.toyworld.train", "dm"]


def test_storygpt_task_fails_clearly_without_its_char_ldm(tmp_path):
    from acdc_lib.toyworld import storygpt

    with pytest.raises(FileNotFoundError, match="Char-LDM at .*char_ldm_noreg, which does not exist"):
        storygpt.train_models(["aligned_lm_noreg"], tmp_path)
    with pytest.raises(ValueError, match="unknown StoryGPT-V-toy models"):
        storygpt.train_models(["arm"], tmp_path)


def test_a_killed_parallel_retrain_skips_what_it_finished(tmp_path):
    # A finished run leaves no mark; a run with a mark (killed) and the same configs skips its finished tasks.
    cfgs = {"probe": T.TrainConfig(**{**T.asdict(T.DEFAULTS["probe"]), "steps": 12, "warmup": 2})}
    forwarded = ["--steps-scale=0.002"]
    T.run_parallel(["probe"], tmp_path, jobs=2, forwarded=forwarded, poll_s=0.2, configs=cfgs)
    assert not (tmp_path / T.RETRAIN_MARK).exists()
    first = json.loads((tmp_path / "train_log.json").read_text())["evaluator_probe"]["finished"]
    (tmp_path / T.RETRAIN_MARK).write_text(json.dumps({"started": first - 1, "configs": {"probe": T._plain(cfgs["probe"])}}))
    T.run_parallel(["probe"], tmp_path, jobs=2, forwarded=forwarded, poll_s=0.2, configs=cfgs)
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["evaluator_probe"]["finished"] == first and log["all"]["resumed"] == ["probe"]
    # A fresh retrain (no mark) trains it again.
    T.run_parallel(["probe"], tmp_path, jobs=2, forwarded=forwarded, poll_s=0.2, configs=cfgs)
    assert json.loads((tmp_path / "train_log.json").read_text())["evaluator_probe"]["finished"] > first


def test_sentence_pairs_keep_only_sentences_that_state_their_frame():
    stories = generate_stories(30, seed=5)
    pairs = T.sentence_pairs(stories)
    # In the grammar only first sentences state species, place, time and action together.
    assert [p[0] for p in pairs] == [s.sentences[0] for s in stories]
    assert [p[1] for p in pairs] == [SceneState.from_dict(s.states[0]) for s in stories]
    bare = generate_stories(1, seed=5)[0]
    bare.meta = {}
    with pytest.raises(ValueError, match="meta"):
        T.sentence_pairs([bare])
    later = generate_stories(1, seed=5)[0]
    later.meta["explicit"] = [["action"]] * len(later.sentences)
    with pytest.raises(ValueError, match="states everything"):
        T.sentence_pairs([later])


def test_dm_training_mixes_story_sentences_into_its_prompts(monkeypatch, tiny_vq):
    import acdc_lib.sdedit as sdedit

    stories = generate_stories(250, seed=6)  # the last val_stories (200) are held out of the pairs
    monkeypatch.setattr(T, "load_split", lambda name: stories)
    seen, encode = [], sdedit.encode_text
    monkeypatch.setattr(sdedit, "encode_text", lambda tok, te, prompts: seen.extend(prompts) or encode(tok, te, prompts))
    cfg = lambda p: T.TrainConfig(steps=3, batch_size=16, lr=1e-3, seed=0, warmup=1,  # noqa: E731
                                  extra={"channels": (16, 32), "p_uncond": 0.0, "p_sentence": p})
    T.train_dm(tiny_vq, cfg(0.5), verbose=False)
    firsts = {s.sentences[0] for s in stories}
    held_out = {s.sentences[0] for s in stories[-T.DEFAULTS["arm"].extra["val_stories"]:]}
    from_stories = [p for p in seen if p in firsts]
    assert 0.3 < len(from_stories) / len(seen) < 0.7
    assert not set(from_stories) & held_out
    seen.clear()
    T.train_dm(tiny_vq, cfg(0.0), verbose=False)
    assert seen and not [p for p in seen if p in firsts]
