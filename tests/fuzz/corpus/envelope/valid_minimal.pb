
m-1general