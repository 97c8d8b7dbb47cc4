-- State of reload_uas_app.lua that survives its reloads: a module of its own, required
-- by the application and never reloaded itself.
return { generation = 0 }
