if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return -1 end
local t = redis.call('PTTL', KEYS[1])
if t < 1 then t = 1 end
return t
