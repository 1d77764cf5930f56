
m-1generalalice €€ùÀÁÄ‚*hello2
text/plain:

langfr:
emojiğŸ˜€B	team.acks