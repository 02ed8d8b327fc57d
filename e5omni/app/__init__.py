"""The search page over an index (`e5omni app`) and the Hub Space it is published as."""
