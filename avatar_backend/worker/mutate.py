import sys, pathlib
root = pathlib.Path("/work/main/avatar_backend/worker")
M = {
 "A": ("main.py", [("""        self.pool.mark_updated(state.npc_id)
        started""", "        started"), ("""        ended = self.scheduler.complete_block(plan, compute_s)
""", """        ended = self.scheduler.complete_block(plan, compute_s)
        self.pool.mark_updated(state.npc_id)
""")]),
 "B": ("scheduler.py", [("""        if already_marked:
            return []  # a repeated end of utterance: the first one is still pending
        if len(state.voice):""", """        if len(state.voice) and not already_marked:""")]),
 "C": ("scheduler.py", [("""        if self.reason != "underrun" or not self.voice_samples:""", """        if self.reason != "underrun":""")]),
 "D": ("scheduler.py", [("""        if state.listening and not voice_samples and state.listening_prompt:""", """        if False:""")]),
 "D2": ("scheduler.py", [("""        if state.listening and not voice_samples and state.listening_prompt:
            prompt, intensity = state.listening_prompt, 1.0""", """        if state.listening and not voice_samples and state.listening_prompt:
            prompt = state.listening_prompt""")]),
 "E": ("scheduler.py", [("""        if len(state.voice) + len(pcm) > limit:""", """        if False:""")]),
 "F": ("memory_pool.py", [("""            if resume_token and (existing is None or resume_token != existing["resume_token"]):""", """            if existing is not None and resume_token and resume_token != existing["resume_token"]:""")]),
 "G": ("memory_pool.py", [("""                           existing["fps"], existing["seed"])""", """                           existing["fps"], 0)""")]),
 "H": ("main.py", [("""                                        listening_prompt=listening_prompt(record))""", """                                        listening_prompt=None)""")]),
 "I": ("main.py", [("""    return (record.action_prompts.get(LISTENING_PROMPT_NAME) or record.emotion_prompts.get(LISTENING_PROMPT_NAME)""", """    return (record.emotion_prompts.get(LISTENING_PROMPT_NAME) or record.action_prompts.get(LISTENING_PROMPT_NAME)""")]),
 "J": ("main.py", [("""        except VoiceQueueFull as err:
            raise RequestError("RESOURCE_EXHAUSTED", str(err)) from None""", """        except VoiceQueueFull as err:
            raise RequestError("INTERNAL", str(err)) from None""")]),
}
name = sys.argv[1]
f, reps = M[name]
p = root / f
t = p.read_text()
for a, b in reps:
    assert t.count(a) == 1, (name, a)
    t = t.replace(a, b)
p.write_text(t)
