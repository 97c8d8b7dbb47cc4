--[[ own_contact.lua — the no-open-relay rule of examples/chat.lua and examples/presence.lua,
  servers with no passwords: a REGISTER or SUBSCRIBE may name as Contact only the address
  it came from (over UDP its port too; a TCP or TLS connection's port is not the one the
  peer listens on), or anyone could have the server send MESSAGEs or NOTIFYs to any host
  (spec/relay_spec.lua).  Loaded with loadfile (like users.lua):
    local own_contact = assert(loadfile(here .. "/own_contact.lua"))()
    if not own_contact(req) then return req:reply(403, "Contact Is Not The Sender") end
]]
return function(req)
  local s = req.source
  local addr = s.address:find(":") and "[" .. s.address .. "]" or s.address
  for _, c in ipairs(req.contact) do
    if not c.star then
      local hostport = c.uri:gsub("^sips?:", ""):gsub("^[^@]*@", ""):match("^[^;?>]*")
      local host, port = hostport:match("^(.*):(%d+)$")
      if (host or hostport):lower() ~= addr:lower() then return false end
      if s.transport == "udp" and (tonumber(port) or 5060) ~= s.port then return false end
    end
  end
  return true
end
