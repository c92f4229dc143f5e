# The blockwal addon. Sources are every .cc file under native/ (listed by
# scripts/native-sources.js so adding a file needs no edit here).
# Sanitizer build: `npm run build:asan` (passes -Dsanitize=1).
{
  "variables": {
    "sanitize%": 0
  },
  "targets": [
    {
      "target_name": "blockwal",
      "sources": ["<!@(node scripts/native-sources.js)"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "libraries": ["-luring", "-lxxhash"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags": ["-Wall", "-Wextra", "-Werror"],
      "cflags_cc": ["-std=c++20", "-fexceptions", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers"],
      "conditions": [
        ["sanitize==1", {
          "cflags": ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"],
          "cflags_cc": ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"],
          "ldflags": ["-fsanitize=address,undefined"]
        }, {
          "cflags_cc": ["-O2", "-g"]
        }]
      ]
    }
  ]
}
