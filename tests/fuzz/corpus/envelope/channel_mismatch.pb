
m-1randomalice €€ùÀÁÄ‚*hello2
text/plain