
m-1generalalice €€ùÀÁÄ‚*hello2
text/plain
m-2