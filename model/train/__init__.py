"""Training the tiny model from scratch on procedural characters (``python -m model.train``).

Stages, each resumable from its checkpoint in the work folder:

1. ``data``: render the training clips (``model.data``) with a language and a speaker held out;
2. ``vae``: the Wan VAE encoder with the light streaming decoder, trained as the Wan VAE is (reconstruction
   through a sample of its posterior, plus a small KL term), with the mouth weighted up;
3. ``latents``: every clip encoded once to DiT-space latents, plus its reference-image conditioning;
4. ``dit``: the DiT and the learned encoders with Neighbor Forcing (see :mod:`model.train.dit_stage`);
5. ``export``: one prefixed safetensors file and its manifest into ``model/weights``.

Everything a block is conditioned on comes from :mod:`avatar_backend.generator.conditioning`, the functions
serving uses.
"""
