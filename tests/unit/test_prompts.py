from gemma_serving.engines.prompts import chat_messages
from gemma_serving.engines.types import (
    AudioPart,
    AudioTask,
    GenerationRequest,
    Message,
    Sampling,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)

TOOL = Tool("get_time", "time", {"type": "object"})


def texts(message):
    return "".join(c.get("text", f"<{c['type']}>") for c in message["content"])


def test_tools_are_offered_in_the_system_turn_merged_with_the_users_system_message():
    request = GenerationRequest("m", (Message("system", (TextPart("Be brief."),)), Message("user", (TextPart("hi"),))),
                                Sampling(4), tools=(TOOL,))
    out = chat_messages(request)
    assert [m["role"] for m in out] == ["system", "user"]
    assert texts(out[0]).startswith("Be brief.") and '"name": "get_time"' in texts(out[0])


def test_no_tools_prompt_when_tool_choice_is_none():
    request = GenerationRequest("m", (Message("user", (TextPart("hi"),)),), Sampling(4), tools=(TOOL,),
                                tool_choice=ToolChoice("none"))
    assert [m["role"] for m in chat_messages(request)] == ["user"]


def test_tool_calls_and_results_become_model_and_user_turns():
    call = ToolCall("call_1", "get_time", '{"tz": "UTC"}')
    messages = (
        Message("user", (TextPart("time?"),)),
        Message("assistant", (), (call,)),
        Message("tool", (TextPart("12:00"),), tool_call_id="call_1"),
        Message("tool", (TextPart("13:00"),), tool_call_id="call_2"),
    )
    out = chat_messages(GenerationRequest("m", messages, Sampling(4)))
    assert [m["role"] for m in out] == ["user", "assistant", "user"]
    assert texts(out[1]) == '{"name": "get_time", "arguments": {"tz": "UTC"}}'
    assert "call_1" in texts(out[2]) and "12:00" in texts(out[2]) and "13:00" in texts(out[2])


def test_audio_task_instruction_follows_the_audio():
    request = GenerationRequest("m", (Message("user", (AudioPart(b"x"),)),), Sampling(4),
                                audio_task=AudioTask("translate", "French"))
    assert texts(chat_messages(request)[0]) == "<audio>Translate this audio into French."
