//! The Lua the Redis engine runs: each script is one atomic step on the
//! server, so a channel's sequence number, its history and the publish to
//! every node happen together, in one order for every node.
//!
//! Keys (`P` is `prefix`):
//! - `P:{channel}:m`: the channel's stream head, a hash: `e` its epoch,
//!   `s` its last sequence number (expires `stream_ttl` after the last use);
//! - `P:{channel}:l`: its history, a Redis Stream of whole payloads, capped
//!   at `history_size` (expires `history_ttl` after the last publish);
//! - `{P}:nodes`: live nodes, a sorted set scored by when each expires;
//! - `{P}:n:NODE:clients` / `:names`: the names connected to NODE, with and
//!   without their namespace; `{P}:n:NODE:ch`: channels where NODE has
//!   subscribers; `{P}:p:NODE:CHANNEL`: their names (presence).
//!
//! Pub/sub: `P:c:CHANNEL` carries a channel's messages (and, unsequenced,
//! `join NODE NAME` / `leave NODE NAME` presence events), `P:inbox:NODE`
//! the direct messages for NODE's clients.

/// Server time in milliseconds, and forgetting a node's registry entries.
const COMMON: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(base, node, topic)
  local n = base .. ':n:' .. node
  for _, ch in ipairs(redis.call('SMEMBERS', n .. ':ch')) do
    local key = base .. ':p:' .. node .. ':' .. ch
    if topic then
      for _, name in ipairs(redis.call('SMEMBERS', key)) do
        redis.call('PUBLISH', topic .. ch, 'leave ' .. node .. ' ' .. name)
      end
    end
    redis.call('DEL', key)
  end
  redis.call('DEL', n .. ':ch', n .. ':clients', n .. ':names')
  redis.call('ZREM', base .. ':nodes', node)
end
local function open(meta, log, candidate, ttl)
  if redis.call('HSETNX', meta, 'e', candidate) == 1 then
    redis.call('DEL', log)
  end
  redis.call('PEXPIRE', meta, ttl)
  return redis.call('HGET', meta, 'e')
end
"#;

/// KEYS: head, log. ARGV: candidate epoch, history size, history ttl ms,
/// stream ttl ms, pub/sub channel, the payload after `seq epoch `.
/// Returns {seq, epoch, nodes that received it}.
const PUBLISH: &str = r#"
local epoch = open(KEYS[1], KEYS[2], ARGV[1], ARGV[4])
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
local payload = string.format('%d', seq) .. ' ' .. epoch .. ' ' .. ARGV[6]
local size = tonumber(ARGV[2])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, '*', 'p', payload)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {seq, epoch, redis.call('PUBLISH', ARGV[5], payload)}
"#;

/// KEYS: head, log. ARGV: candidate epoch, history size, stream ttl ms,
/// the epoch and seq this node last saw. Returns {epoch, seq, server ms,
/// then id, payload for each kept message, oldest first}. A head behind
/// what the node saw in the same epoch means Redis lost messages (a
/// failover to a replica that had not received them): the channel starts
/// a new epoch then, so the lost positions are never taken by others.
const LOAD: &str = r#"
local epoch = open(KEYS[1], KEYS[2], ARGV[1], ARGV[3])
local seq = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
if epoch == ARGV[4] and seq < tonumber(ARGV[5]) then
  epoch = ARGV[1]
  seq = 0
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  redis.call('DEL', KEYS[2])
end
local out = {epoch, seq, now_ms()}
local size = tonumber(ARGV[2])
if size > 0 then
  local kept = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', size)
  for i = #kept, 1, -1 do
    out[#out + 1] = kept[i][1]
    out[#out + 1] = kept[i][2][2]
  end
end
return out
"#;

/// ARGV: base, node, ttl ms, channel topic prefix. Marks the node alive
/// until now + ttl and forgets nodes past theirs, announcing that their
/// subscribers left. Returns 1 if the node was not listed (new, or
/// forgotten while it could not report).
const HEARTBEAT: &str = r#"
local now = now_ms()
local fresh = redis.call('ZADD', ARGV[1] .. ':nodes', now + tonumber(ARGV[3]), ARGV[2])
for _, node in ipairs(redis.call('ZRANGEBYSCORE', ARGV[1] .. ':nodes', '-inf', now)) do
  forget(ARGV[1], node, ARGV[4])
end
return fresh
"#;

/// ARGV: base, node. A node starting its registry over.
const LEAVE: &str = r#"
forget(ARGV[1], ARGV[2], false)
return 0
"#;

/// ARGV: base, node, channel, name, 1 (joined) or 0 (left), whether the
/// name is new to (or gone from) the channel on this node, topic. Lists
/// or unlists the name, and tells every node's presence listeners.
const PRESENT: &str = r#"
local key = ARGV[1] .. ':p:' .. ARGV[2] .. ':' .. ARGV[3]
local index = ARGV[1] .. ':n:' .. ARGV[2] .. ':ch'
if ARGV[6] == '1' and ARGV[5] == '1' then
  redis.call('SADD', key, ARGV[4])
  redis.call('SADD', index, ARGV[3])
elseif ARGV[6] == '1' then
  redis.call('SREM', key, ARGV[4])
  if redis.call('SCARD', key) == 0 then
    redis.call('SREM', index, ARGV[3])
  end
end
local kind = 'leave '
if ARGV[5] == '1' then kind = 'join ' end
redis.call('PUBLISH', ARGV[7], kind .. ARGV[2] .. ' ' .. ARGV[4])
return 0
"#;

/// ARGV: base, this node, `clients` or `names`, member, inbox prefix,
/// payload. Publishes to the inbox of every other live node with that
/// member; returns how many.
const DIRECT: &str = r#"
local count = 0
for _, node in ipairs(redis.call('ZRANGEBYSCORE', ARGV[1] .. ':nodes', now_ms(), '+inf')) do
  if node ~= ARGV[2] and redis.call('SISMEMBER', ARGV[1] .. ':n:' .. node .. ':' .. ARGV[3], ARGV[4]) == 1 then
    redis.call('PUBLISH', ARGV[5] .. node, ARGV[6])
    count = count + 1
  end
end
return count
"#;

/// ARGV: base, channel. The names subscribed to it on every live node.
const PRESENCE: &str = r#"
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', ARGV[1] .. ':nodes', now_ms(), '+inf')) do
  for _, name in ipairs(redis.call('SMEMBERS', ARGV[1] .. ':p:' .. node .. ':' .. ARGV[2])) do
    out[#out + 1] = name
  end
end
return out
"#;

/// The scripts, loaded once per connection and then run by hash.
pub(super) struct Scripts {
    pub(super) publish: ::redis::Script,
    pub(super) load: ::redis::Script,
    pub(super) heartbeat: ::redis::Script,
    pub(super) leave: ::redis::Script,
    pub(super) present: ::redis::Script,
    pub(super) direct: ::redis::Script,
    pub(super) presence: ::redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        let script = |body: &str| ::redis::Script::new(&format!("{COMMON}{body}"));
        Scripts {
            publish: script(PUBLISH),
            load: script(LOAD),
            heartbeat: script(HEARTBEAT),
            leave: script(LEAVE),
            present: script(PRESENT),
            direct: script(DIRECT),
            presence: script(PRESENCE),
        }
    }

    pub(super) fn all(&self) -> [&::redis::Script; 7] {
        [
            &self.publish,
            &self.load,
            &self.heartbeat,
            &self.leave,
            &self.present,
            &self.direct,
            &self.presence,
        ]
    }
}
