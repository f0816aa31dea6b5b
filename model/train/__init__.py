"""Training the tiny model from scratch on procedural characters (``python -m model.train``).

Stages, each resumable from its checkpoint in the work folder:

1. ``data``: render the training clips (``model.data``) with a language and a speaker held out, and the control
   stage's clips, whose events start only at block starts;
2. ``vae``: the light encoder and the light streaming decoder, trained as the Wan VAE is (reconstruction
   through a sample of its posterior, plus a small KL term), on crops, with the mouth, the eyes, the brows and
   a visible hand weighted up;
3. ``decoder``: the decoder alone on long windows, the encoder frozen;
4. ``latents``: every clip encoded once to DiT-space latents, plus its reference-image conditioning;
5. ``dit``: the DiT and the learned encoders with Neighbor Forcing (see :mod:`model.train.dit_stage`);
6. ``control``: the same, continued on the control clips with the eyes, brows and hand weighted up as well;
7. ``export``: one prefixed safetensors file and its manifest into ``model/weights`` (the shipped recipe) or
   the work folder's ``weights`` (any other).

Everything a block is conditioned on comes from :mod:`avatar_backend.generator.conditioning`, the functions
serving uses.
"""
