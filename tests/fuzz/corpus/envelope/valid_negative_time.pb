
m-1generalalice ÿÿÿÿÿÿÿÿÿ*hello2
text/plain