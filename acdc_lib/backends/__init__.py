"""Real models behind the core protocols: transformers ARMs (Emu3, Janus-Pro), the diffusers correctors
(in `acdc_lib.sdedit`) and the real evaluator (CLIP, Inception, DINOv2). Model ids are parameters;
nothing is downloaded by this package itself."""
