-- Users of examples/pbx.lua: name -> password (digest realm = the PBX host).
-- Demo credentials for loopback tests only.
return {
  alice = "alice-secret",
  bob = "bob-secret",
  carol = "carol-secret",
}
