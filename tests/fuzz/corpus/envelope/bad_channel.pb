
m-1gen eralalice €€ùÀÁÄ‚*hello2
text/plain