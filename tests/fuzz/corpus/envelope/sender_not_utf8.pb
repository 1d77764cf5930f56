
m-1generalalÿice €€ùÀÁÄ‚*hello2
text/plain