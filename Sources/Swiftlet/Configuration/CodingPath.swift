/// A decoding error's place in a JSON document as the user wrote it: `drives[0].rate_limiter`,
/// `process.rlimits[0].type`. Used by the two JSON readers (the API's models and OCI bundles'
/// config.json) to name the field a one-line error is about.
package func codingPathDescription(_ codingPath: [any CodingKey]) -> String {
    var text = ""
    for key in codingPath {
        if let index = key.intValue {
            text += "[\(index)]"
        } else {
            text += text.isEmpty ? key.stringValue : ".\(key.stringValue)"
        }
    }
    return text
}
