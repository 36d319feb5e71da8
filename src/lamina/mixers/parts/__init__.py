"""Parts of mixers that are not mixers: helpers several mixers share, and pieces split from one mixer's file.

Nothing here is registered; a mixer file imports what it uses from here, never another mixer.
"""
